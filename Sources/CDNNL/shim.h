// oneDNN 2.6 C API (Debian libdnnl-dev). oneDNN uses the OpenMP (libgomp) CPU runtime here,
// so the thread count is set with omp_set_num_threads before primitives are created.
#include <oneapi/dnnl/dnnl.h>
void omp_set_num_threads(int n);
int omp_get_max_threads(void);
// libgomp's fork-join entry point (the call GCC emits for `#pragma omp parallel`) and team queries:
// our own memory-bound loops run on the same OpenMP team as oneDNN, so its workers never spin
// against a second thread pool.
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
int omp_get_thread_num(void);
int omp_get_num_threads(void);
