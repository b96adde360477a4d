# hugemm(1), generated from the command's own --help with help2man (Debian: help2man) and
# installed with the command.
find_program(HELP2MAN help2man)
if(HELP2MAN)
  set(HUGEMM_MANPAGE "${PROJECT_BINARY_DIR}/hugemm.1.gz")
  add_custom_command(OUTPUT "${HUGEMM_MANPAGE}"
                     COMMAND bash "${PROJECT_SOURCE_DIR}/cmake/make_manpage.sh"
                             $<TARGET_FILE:hugemm_cli> "${HUGEMM_MANPAGE}"
                     DEPENDS hugemm_cli "${PROJECT_SOURCE_DIR}/cmake/make_manpage.sh"
                     COMMENT "hugemm(1) from hugemm --help")
  add_custom_target(hugemm_manpage ALL DEPENDS "${HUGEMM_MANPAGE}")
  install(FILES "${HUGEMM_MANPAGE}" DESTINATION "${CMAKE_INSTALL_MANDIR}/man1" COMPONENT tools)
  if(BUILD_TESTING)
    add_test(NAME manpage_test
             COMMAND bash "${PROJECT_SOURCE_DIR}/tests/manpage_test.sh" $<TARGET_FILE:hugemm_cli>
                     "${HUGEMM_MANPAGE}")
    set_tests_properties(manpage_test PROPERTIES LABELS cli)
  endif()
else()
  message(WARNING "help2man not found: no hugemm(1) man page (Debian: apt-get install help2man)")
endif()
