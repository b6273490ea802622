# Writes a section 1 man page from a program's own --help (cmake -P; run by the build,
# see tools/CMakeLists.txt), so that the page and the program cannot disagree:
#   cmake -DPROG=build/qdup-index -DNAME=qdup-index -DSUMMARY="..." -DVERSION=0.1.0
#         [-DSUBCOMMANDS=build,add] [-DSEEALSO="qdup-daemon(1)"] -DOUT=qdup-index.1
#         -P help2man.cmake
# NAME and SUMMARY make the NAME section; the first "usage:" paragraph the SYNOPSIS;
# the rest of --help (and each SUBCOMMAND's --help) the DESCRIPTION, kept as written
# (no fill), every line escaped for roff.

function(roff_escape in outvar)
  string(REPLACE "\\" "\\e" s "${in}")
  # A line starting with . or ' would be a roff request.
  string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" s "${s}")
  set(${outvar} "${s}" PARENT_SCOPE)
endfunction()

function(help_of args outvar)
  execute_process(COMMAND ${PROG} ${args} --help OUTPUT_VARIABLE out ERROR_VARIABLE err
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0 OR out STREQUAL "")
    message(FATAL_ERROR "help2man: ${PROG} ${args} --help failed (${rc}): ${err}")
  endif()
  set(${outvar} "${out}" PARENT_SCOPE)
endfunction()

help_of("" help)
# The synopsis: the leading block up to the first blank line.
string(FIND "${help}" "\n\n" cut)
if(cut LESS 0)
  set(cut 0)
endif()
string(SUBSTRING "${help}" 0 ${cut} synopsis)
string(SUBSTRING "${help}" ${cut} -1 rest)
string(REGEX REPLACE "^usage: *" "" synopsis "${synopsis}")
string(REGEX REPLACE "\n *" "\n" synopsis "${synopsis}")
string(REGEX REPLACE "\n *usage: *" "\n" synopsis "${synopsis}")
string(STRIP "${rest}" rest)
roff_escape("${synopsis}" synopsis)
roff_escape("${rest}" rest)

string(TOUPPER "${NAME}" upper)
set(page ".\\\" Generated from ${NAME} --help by tools/man/help2man.cmake: do not edit.
.TH ${upper} 1 \"\" \"qdup ${VERSION}\" \"qdup manual\"
.SH NAME
${NAME} \\- ${SUMMARY}
.SH SYNOPSIS
.nf
${synopsis}
.fi
.SH DESCRIPTION
.nf
${rest}
.fi
")
string(REPLACE "," ";" SUBCOMMANDS "${SUBCOMMANDS}")
foreach(sub ${SUBCOMMANDS})
  help_of("${sub}" subhelp)
  string(STRIP "${subhelp}" subhelp)
  roff_escape("${subhelp}" subhelp)
  string(APPEND page ".SS ${NAME} ${sub}\n.nf\n${subhelp}\n.fi\n")
endforeach()
string(APPEND page ".SH SEE ALSO\n${SEEALSO}\n.PP\nREADME.md and BENCHMARKS.md of the qdup \
sources; /usr/share/doc/qdup.\n")
file(WRITE "${OUT}" "${page}")
