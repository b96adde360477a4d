# One static library per layer, each seeing only the internal headers of the layers it
# links.
#
#   hugemm_add_layer(<name> [TOOL] [DEPS <lower layers...>] [PUBLIC_HEADERS <x.h...>]
#                    [LIBS <external targets...>] [PRIVATE_LIBS <external targets...>])
#
# Called from the layer's folder: every *.cc there (main.cc excepted) is the layer, so a
# new file joins its layer by where it lives. The library is hugemm_<name>.
# PUBLIC_HEADERS names the files of include/hugemm/ the layer implements; the layer check
# (cmake/check_layers.sh) needs that map to place a public #include. TOOL marks a layer
# above the API (perf, cli) that is not part of libhugemm.
#
# Include roots. Internal headers keep the spelling "runtime/<layer>/x.h", which names
# their owner in every #include. The repository root cannot be an include path (it would
# show every layer's internals to every other), so each layer gets a root of its own in
# the build tree holding one entry: a link runtime/<name> to its folder. The root is a
# PUBLIC include directory of the layer's library: a library that links the layer sees
# the layer's internals, and through CMake's usage requirements the internals of
# everything the layer links in turn; nothing else does. A layer that includes an
# internal header of a layer it does not link fails to compile. Public headers
# (include/hugemm/) are the API, visible to all; the layer check places them.

set(HUGEMM_INCLUDE_ROOTS "${PROJECT_BINARY_DIR}/include-roots")

# hugemm_layer_root(<name> <folder> <spelling>): a root holding <spelling> -> <folder>.
function(hugemm_layer_root name folder spelling)
  set(root "${HUGEMM_INCLUDE_ROOTS}/${name}")
  get_filename_component(parent "${root}/${spelling}" DIRECTORY)
  file(MAKE_DIRECTORY "${parent}")
  file(CREATE_LINK "${folder}" "${root}/${spelling}" SYMBOLIC)
  set(HUGEMM_LAYER_ROOT "${root}" PARENT_SCOPE)
endfunction()

function(hugemm_add_layer name)
  cmake_parse_arguments(PARSE_ARGV 1 L "TOOL" "" "DEPS;PUBLIC_HEADERS;LIBS;PRIVATE_LIBS")
  if(L_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "hugemm_add_layer(${name}): unknown arguments ${L_UNPARSED_ARGUMENTS}")
  endif()
  set(target hugemm_${name})
  file(GLOB sources CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/*.cc")
  list(FILTER sources EXCLUDE REGEX "/main\\.cc$")
  add_library(${target} STATIC ${sources})
  file(RELATIVE_PATH spelling "${PROJECT_SOURCE_DIR}" "${CMAKE_CURRENT_SOURCE_DIR}")
  hugemm_layer_root(${name} "${CMAKE_CURRENT_SOURCE_DIR}" "${spelling}")
  target_include_directories(${target} PUBLIC "$<BUILD_INTERFACE:${HUGEMM_LAYER_ROOT}>"
                                              "$<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>")
  set(dep_targets)
  foreach(dep IN LISTS L_DEPS)
    list(APPEND dep_targets hugemm_${dep})
  endforeach()
  target_link_libraries(${target} PUBLIC ${dep_targets} ${L_LIBS} PRIVATE ${L_PRIVATE_LIBS})
  # The objects also make the shared libhugemm, so they are position-independent. Calls
  # within the library stay direct and inlinable (no symbol of it is meant to be
  # interposed), and its thread-locals are reached as an executable's are (the
  # allocator's magazines sit on the hot path).
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  target_compile_options(${target} PRIVATE -fno-semantic-interposition
                                           -ftls-model=initial-exec)

  if(NOT L_TOOL)
    set_property(GLOBAL APPEND PROPERTY HUGEMM_LIBRARY_LAYERS ${name})
  endif()
  hugemm_register_layer(${name} "${spelling}" "$<TARGET_FILE:${target}>"
                        DEPS ${L_DEPS} PUBLIC_HEADERS ${L_PUBLIC_HEADERS})
endfunction()

# hugemm_register_layer(<name> <folder> <archive or -> [DEPS ...] [PUBLIC_HEADERS ...]):
# puts a layer in the layer check's map; hugemm_add_layer does it for its libraries, the
# CLI (an executable: "-", no archive to check) does it itself.
function(hugemm_register_layer name folder archive)
  cmake_parse_arguments(PARSE_ARGV 3 L "" "" "DEPS;PUBLIC_HEADERS")
  set_property(GLOBAL APPEND PROPERTY HUGEMM_LAYERS ${name})
  set_property(GLOBAL PROPERTY HUGEMM_LAYER_${name}_DIR "${folder}")
  set_property(GLOBAL PROPERTY HUGEMM_LAYER_${name}_ARCHIVE "${archive}")
  set_property(GLOBAL PROPERTY HUGEMM_LAYER_${name}_DEPS ${L_DEPS})
  set_property(GLOBAL PROPERTY HUGEMM_LAYER_${name}_HEADERS ${L_PUBLIC_HEADERS})
endfunction()

# hugemm_write_layer_map(<file>): one line per layer, for the layer check:
#   <name> <folder> <archive> deps=<a,b> headers=<x.h,y.h>
function(hugemm_write_layer_map file)
  get_property(layers GLOBAL PROPERTY HUGEMM_LAYERS)
  set(content "")
  foreach(name IN LISTS layers)
    get_property(deps GLOBAL PROPERTY HUGEMM_LAYER_${name}_DEPS)
    get_property(dir GLOBAL PROPERTY HUGEMM_LAYER_${name}_DIR)
    get_property(archive GLOBAL PROPERTY HUGEMM_LAYER_${name}_ARCHIVE)
    get_property(headers GLOBAL PROPERTY HUGEMM_LAYER_${name}_HEADERS)
    list(JOIN deps "," deps)
    list(JOIN headers "," headers)
    string(APPEND content "${name} ${dir} ${archive} deps=${deps} headers=${headers}\n")
  endforeach()
  file(GENERATE OUTPUT "${file}" CONTENT "${content}")
endfunction()
