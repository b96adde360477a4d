# What `cmake --install` puts where for the verbs layer (runtime/verbs), in two components
# of its own (Debian packages libhugemm-verbs<major> and libhugemm-verbs-dev, see
# cmake/HugemmPackaging.cmake):
#   verbs      libhugemm-verbs.so.<version> and its SONAME link
#   verbs_dev  verbs.h and hugemm_verbs.h, libhugemm-verbs.so and .a, the CMake
#              component (find_package(hugemm COMPONENTS verbs) -> hugemm::hugemm_verbs,
#              hugemm::hugemm_verbs_static) and the pkg-config file hugemm-verbs.pc
# Apart from libhugemm's so that a program without RDMA neither links nor installs
# libibverbs. Included after HugemmInstall.cmake (it uses HUGEMM_CMAKE_DIR).
install(TARGETS hugemm_verbs_shared EXPORT hugemmVerbsTargets
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT verbs NAMELINK_COMPONENT verbs_dev)
install(TARGETS hugemm_verbs_static EXPORT hugemmVerbsTargets
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT verbs_dev)
install(FILES "${PROJECT_SOURCE_DIR}/include/hugemm/verbs.h"
              "${PROJECT_SOURCE_DIR}/include/hugemm/hugemm_verbs.h"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/hugemm" COMPONENT verbs_dev)
install(EXPORT hugemmVerbsTargets NAMESPACE hugemm:: DESTINATION "${HUGEMM_CMAKE_DIR}"
        COMPONENT verbs_dev)
install(FILES "${PROJECT_SOURCE_DIR}/cmake/hugemmVerbsDependencies.cmake"
        DESTINATION "${HUGEMM_CMAKE_DIR}" COMPONENT verbs_dev)

# pkg-config, written at install time like hugemm.pc (HugemmInstall.cmake).
configure_file("${PROJECT_SOURCE_DIR}/cmake/hugemm-verbs.pc.in"
               "${PROJECT_BINARY_DIR}/hugemm-verbs.pc.in" @ONLY)
install(CODE "set(prefix \"\${CMAKE_INSTALL_PREFIX}\")
              configure_file(\"${PROJECT_BINARY_DIR}/hugemm-verbs.pc.in\"
                             \"${PROJECT_BINARY_DIR}/hugemm-verbs.pc\" @ONLY)"
        COMPONENT verbs_dev)
install(FILES "${PROJECT_BINARY_DIR}/hugemm-verbs.pc"
        DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig" COMPONENT verbs_dev)
