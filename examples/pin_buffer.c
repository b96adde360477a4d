/* The same from C: map, pin as folio spans, unpin, free. */
#include <stdio.h>

#include "hugemm/hugemm.h"

int main(void) {
  hugemm_runtime* rt;
  if (hugemm_open(NULL, &rt) < 0) {
    fprintf(stderr, "open: %s\n", hugemm_last_error());
    return 1;
  }
  hugemm_buffer buf;
  if (hugemm_map_buffer(rt, 64u << 20, NULL, &buf) < 0) {
    fprintf(stderr, "map: %s\n", hugemm_last_error());
    hugemm_close(rt);
    return 1;
  }
  hugemm_folio_span spans[32];
  long n = hugemm_pin_folios(rt, buf.data, buf.size, HUGEMM_PIN | HUGEMM_WRITE, spans, 32);
  if (n < 0) {
    fprintf(stderr, "pin: %s\n", hugemm_last_error());
  } else {
    printf("pinned %zu MiB as %ld folio spans\n", buf.size >> 20, n);
    hugemm_unpin_folios(rt, spans, (size_t)n, HUGEMM_PIN, 1);
  }
  hugemm_free(rt, buf.data);
  hugemm_close(rt);
  return n < 0;
}
