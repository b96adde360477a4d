/* The C tests' one assertion: CHECK(cond) counts a pass or prints the failed condition
 * with hugemm_last_error(); main prints the two counts. C99. */
#ifndef HUGEMM_TESTS_C_CHECK_H_
#define HUGEMM_TESTS_C_CHECK_H_

#include <stdio.h>

#include "hugemm/hugemm.h"

static int passed, failed;

#define CHECK(cond)                                                                      \
  do {                                                                                   \
    if (cond) {                                                                          \
      ++passed;                                                                          \
    } else {                                                                             \
      ++failed;                                                                          \
      fprintf(stderr, "%s:%d: FAILED: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
              hugemm_last_error());                                                      \
    }                                                                                    \
  } while (0)

#endif /* HUGEMM_TESTS_C_CHECK_H_ */
