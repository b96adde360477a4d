# What libhugemm-verbs calls besides libhugemm: libibverbs (rdma-core). Included by the
# build and by the installed package's verbs component (hugemmConfig.cmake), which needs
# it for the static library; the shared one carries it as its own DT_NEEDED entry.
#
# As in hugemmDependencies.cmake, nothing here fails: what is not found is named, with its
# Debian package, in hugemm_verbs_MISSING_DEPENDENCIES.
set(hugemm_verbs_MISSING_DEPENDENCIES "")
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(hugemm_ibverbs QUIET IMPORTED_TARGET libibverbs)
  if(NOT hugemm_ibverbs_FOUND)
    list(APPEND hugemm_verbs_MISSING_DEPENDENCIES "libibverbs (Debian: libibverbs-dev)")
  endif()
else()
  list(APPEND hugemm_verbs_MISSING_DEPENDENCIES "pkg-config (Debian: pkg-config)")
endif()
