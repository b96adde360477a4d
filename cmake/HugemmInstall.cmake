# What `cmake --install` puts where, in three components (the Debian packages of
# cmake/HugemmPackaging.cmake):
#   runtime  libhugemm.so.<version> and its SONAME link
#   dev      the public headers, libhugemm.so, libhugemm.a, the CMake package
#            (find_package(hugemm) -> hugemm::hugemm, hugemm::hugemm_static) and the
#            pkg-config files hugemm.pc (shared) and hugemm-static.pc
#   tools    the hugemm command and its man page
include(CMakePackageConfigHelpers)
set(HUGEMM_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/hugemm")

install(TARGETS hugemm EXPORT hugemmTargets
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT runtime NAMELINK_COMPONENT dev)
install(TARGETS hugemm_static EXPORT hugemmTargets
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT dev)
# (The verbs layer's headers go with its own library: HugemmVerbsInstall.cmake.)
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/hugemm"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}" COMPONENT dev FILES_MATCHING PATTERN "*.h"
        PATTERN "verbs.h" EXCLUDE PATTERN "hugemm_verbs.h" EXCLUDE)
install(TARGETS hugemm_cli RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}" COMPONENT tools)

# The CMake package.
install(EXPORT hugemmTargets NAMESPACE hugemm:: DESTINATION "${HUGEMM_CMAKE_DIR}"
        COMPONENT dev)
configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/hugemmConfig.cmake.in"
                              "${PROJECT_BINARY_DIR}/hugemmConfig.cmake"
                              INSTALL_DESTINATION "${HUGEMM_CMAKE_DIR}")
# 0.x: a new minor version may change the API.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/hugemmConfigVersion.cmake"
                                 COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/hugemmConfig.cmake"
              "${PROJECT_BINARY_DIR}/hugemmConfigVersion.cmake"
              "${PROJECT_SOURCE_DIR}/cmake/hugemmDependencies.cmake"
        DESTINATION "${HUGEMM_CMAKE_DIR}" COMPONENT dev)

# pkg-config. The files are written at install time: the prefix is the one installed
# to (cmake --install --prefix, or /usr in the Debian packages), not the configured one.
set(HUGEMM_PC_PUBLIC "absl_status absl_statusor absl_strings absl_str_format")
set(HUGEMM_PC_PRIVATE "absl_inlined_vector numa libdaxctl liburcu-memb liburing")
set(HUGEMM_PC_PRIVATE_LIBS "-lhugetlbfs -lstdc++ -lm -pthread")
set(HUGEMM_PC_PREFIX "@prefix@")  # filled in at install time
foreach(pc hugemm hugemm-static)
  configure_file("${PROJECT_SOURCE_DIR}/cmake/${pc}.pc.in" "${PROJECT_BINARY_DIR}/${pc}.pc.in"
                 @ONLY)
  install(CODE "set(prefix \"\${CMAKE_INSTALL_PREFIX}\")
                configure_file(\"${PROJECT_BINARY_DIR}/${pc}.pc.in\"
                               \"${PROJECT_BINARY_DIR}/${pc}.pc\" @ONLY)"
          COMPONENT dev)
  install(FILES "${PROJECT_BINARY_DIR}/${pc}.pc"
          DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig" COMPONENT dev)
endforeach()
