# The libraries libhugemm's code calls, as imported targets. Included by the build and by
# the installed package (hugemmConfig.cmake), which needs them for the static library:
# the shared one carries them as its own DT_NEEDED entries.
#
# A dependency not found gets no target and is named, with its Debian package, in
# hugemm_MISSING_DEPENDENCIES; nothing here fails. The build stops on it (CMakeLists.txt);
# the package reports itself not found with it, which find_package(hugemm REQUIRED) turns
# into an error and find_package(hugemm QUIET) leaves to its caller.
#
# The targets carry a hugemm_ prefix so that they cannot clash with a user's own search
# for the same library.
set(hugemm_MISSING_DEPENDENCIES "")
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  # <prefix> <pkg-config module> <Debian package>: the target PkgConfig::<prefix>.
  set(_hugemm_modules
      hugemm_numa numa libnuma-dev
      hugemm_daxctl libdaxctl libdaxctl-dev
      hugemm_urcu liburcu-memb liburcu-dev  # the shadow page table's grace periods
      hugemm_uring liburing liburing-dev)   # io_uring fixed buffers hold the kernel long-term pins
  while(_hugemm_modules)
    list(POP_FRONT _hugemm_modules _hugemm_prefix _hugemm_module _hugemm_package)
    pkg_check_modules(${_hugemm_prefix} QUIET IMPORTED_TARGET ${_hugemm_module})
    if(NOT ${_hugemm_prefix}_FOUND)
      list(APPEND hugemm_MISSING_DEPENDENCIES "${_hugemm_module} (Debian: ${_hugemm_package})")
    endif()
  endwhile()
  unset(_hugemm_modules)
  unset(_hugemm_prefix)
  unset(_hugemm_module)
  unset(_hugemm_package)
else()
  list(APPEND hugemm_MISSING_DEPENDENCIES "pkg-config (Debian: pkg-config)")
endif()
# libhugetlbfs has no pkg-config file.
if(NOT TARGET hugemm_deps::hugetlbfs)
  find_library(HUGEMM_HUGETLBFS_LIBRARY hugetlbfs)
  find_path(HUGEMM_HUGETLBFS_INCLUDE_DIR hugetlbfs.h)
  if(HUGEMM_HUGETLBFS_LIBRARY AND HUGEMM_HUGETLBFS_INCLUDE_DIR)
    add_library(hugemm_deps::hugetlbfs UNKNOWN IMPORTED)
    set_target_properties(hugemm_deps::hugetlbfs PROPERTIES
      IMPORTED_LOCATION "${HUGEMM_HUGETLBFS_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${HUGEMM_HUGETLBFS_INCLUDE_DIR}")
  else()
    list(APPEND hugemm_MISSING_DEPENDENCIES "libhugetlbfs (Debian: libhugetlbfs-dev)")
  endif()
endif()
