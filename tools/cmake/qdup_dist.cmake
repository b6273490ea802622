# Runs at install time (cmake --install, cpack; see QdupInstall.cmake): writes the
# systemd units and the example config with the paths of the prefix actually installed
# to, and installs the default model when the build has one.
set(prefix "${CMAKE_INSTALL_PREFIX}")
set(QDUP_BINDIR "${prefix}/bin")
set(QDUP_DATADIR "${prefix}/share/qdup")
# /usr's configuration lives in /etc (the package); any other prefix has its own etc/.
if(prefix STREQUAL "/usr")
  set(QDUP_SYSCONFDIR "/etc")
else()
  set(QDUP_SYSCONFDIR "${prefix}/etc")
endif()

set(out "${QDUP_BINARY_DIR}/dist")
configure_file("${QDUP_SOURCE_DIR}/daemon/dist/qdup.service.in" "${out}/qdup.service" @ONLY)
configure_file("${QDUP_SOURCE_DIR}/daemon/dist/qdup.socket" "${out}/qdup.socket" COPYONLY)
configure_file("${QDUP_SOURCE_DIR}/daemon/dist/qdup.conf.example.in" "${out}/qdup.conf.example"
               @ONLY)
file(INSTALL "${out}/qdup.service" "${out}/qdup.socket"
     DESTINATION "${prefix}/lib/systemd/system")
file(INSTALL "${out}/qdup.conf.example" DESTINATION "${QDUP_DATADIR}")

if(DEFINED ENV{QDUP_MODEL} AND NOT "$ENV{QDUP_MODEL}" STREQUAL "")
  set(QDUP_MODEL "$ENV{QDUP_MODEL}")
endif()
if(EXISTS "${QDUP_MODEL}")
  file(INSTALL "${QDUP_MODEL}" DESTINATION "${QDUP_DATADIR}" RENAME default.qdm)
else()
  message(STATUS "qdup: no model at ${QDUP_MODEL}: ${QDUP_DATADIR}/default.qdm not installed "
          "(tools/quickstart.sh trains models/default.qdm; or set QDUP_MODEL=FILE)")
endif()
