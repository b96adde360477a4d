# What libhugemm-verbs calls besides libhugemm: libibverbs (rdma-core). Included by the
# build and by the installed package's verbs component (hugemmConfig.cmake), which needs
# it for the static library; the shared one carries it as its own DT_NEEDED entry.
find_package(PkgConfig REQUIRED QUIET)
pkg_check_modules(hugemm_ibverbs REQUIRED QUIET IMPORTED_TARGET libibverbs)
