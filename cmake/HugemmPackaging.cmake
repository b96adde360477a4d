# Debian packages with CPack, one per install component (cmake/HugemmInstall.cmake):
#   libhugemm0     the shared library
#   libhugemm-dev  headers, libhugemm.so, libhugemm.a, the CMake and pkg-config files
#   hugemm-tools   the hugemm command and its man page
#   libhugemm-verbs0, libhugemm-verbs-dev  the verbs layer (the MR cache on libibverbs),
#                  apart so that libhugemm's users do not get rdma-core
# Built with `cpack -G DEB` in a build directory. Their dependencies come from
# dpkg-shlibdeps (the shared objects' own) and, for -dev, the -dev packages its headers
# and static library need, so `apt-get install ./*.deb` on a clean Debian 12 pulls them.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME hugemm)
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_CONTACT "hugemm maintainers <maintainers@users.noreply.h-seed-4478bcdb.example>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "DMA buffers on real huge pages, with a shadow page table and GUP-fast pinning")
set(CPACK_PACKAGE_DESCRIPTION
    "hugemm maps hugetlb, hugetlbfs and device-DAX memory as compound folios, keeps a\
 shadow page table of it checked against the kernel's, and pins ranges with one\
 reference operation per folio, for RDMA and storage programs.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
# Install-time paths (the pkg-config prefix) are then /usr, not CPack's staging folder.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL runtime dev tools verbs verbs_dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
# libhugemm-verbs needs libhugemm.so.0, which is in another of these packages: dpkg-shlibdeps
# finds it in the build tree (the dependency itself comes from CPACK_COMPONENT_VERBS_DEPENDS).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS "${PROJECT_BINARY_DIR}/runtime")
set(CPACK_DEBIAN_ENABLE_COMPONENT_DEPENDS ON)

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME "libhugemm${PROJECT_VERSION_MAJOR}")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libhugemm-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_COMPONENT_DEV_DEPENDS runtime)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "libabsl-dev, libnuma-dev, libdaxctl-dev, liburcu-dev, liburing-dev, libhugetlbfs-dev")

set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME hugemm-tools)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION utils)

set(CPACK_DEBIAN_VERBS_PACKAGE_NAME "libhugemm-verbs${PROJECT_VERSION_MAJOR}")
set(CPACK_DEBIAN_VERBS_PACKAGE_SECTION libs)
set(CPACK_COMPONENT_VERBS_DEPENDS runtime)
set(CPACK_DEBIAN_VERBS_DEV_PACKAGE_NAME libhugemm-verbs-dev)
set(CPACK_DEBIAN_VERBS_DEV_PACKAGE_SECTION libdevel)
set(CPACK_COMPONENT_VERBS_DEV_DEPENDS verbs dev)
set(CPACK_DEBIAN_VERBS_DEV_PACKAGE_DEPENDS "libibverbs-dev")

foreach(component runtime dev tools verbs verbs_dev)
  string(TOUPPER ${component} c)
  install(FILES "${PROJECT_SOURCE_DIR}/LICENSE" RENAME copyright
          DESTINATION "${CMAKE_INSTALL_DATADIR}/doc/${CPACK_DEBIAN_${c}_PACKAGE_NAME}"
          COMPONENT ${component})
endforeach()

include(CPack)
