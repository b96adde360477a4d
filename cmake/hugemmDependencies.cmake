# The libraries libhugemm's code calls, as imported targets. Included by the build and by
# the installed package (hugemmConfig.cmake), which needs them for the static library:
# the shared one carries them as its own DT_NEEDED entries.
#
# The targets carry a hugemm_ prefix so that they cannot clash with a user's own search
# for the same library.
find_package(PkgConfig REQUIRED QUIET)
pkg_check_modules(hugemm_numa REQUIRED QUIET IMPORTED_TARGET numa)
pkg_check_modules(hugemm_daxctl REQUIRED QUIET IMPORTED_TARGET libdaxctl)
# The shadow page table's grace periods.
pkg_check_modules(hugemm_urcu REQUIRED QUIET IMPORTED_TARGET liburcu-memb)
# io_uring fixed buffers hold the kernel long-term pins.
pkg_check_modules(hugemm_uring REQUIRED QUIET IMPORTED_TARGET liburing)
# libhugetlbfs has no pkg-config file.
if(NOT TARGET hugemm_deps::hugetlbfs)
  find_library(HUGEMM_HUGETLBFS_LIBRARY hugetlbfs REQUIRED)
  find_path(HUGEMM_HUGETLBFS_INCLUDE_DIR hugetlbfs.h REQUIRED)
  add_library(hugemm_deps::hugetlbfs UNKNOWN IMPORTED)
  set_target_properties(hugemm_deps::hugetlbfs PROPERTIES
    IMPORTED_LOCATION "${HUGEMM_HUGETLBFS_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${HUGEMM_HUGETLBFS_INCLUDE_DIR}")
endif()
