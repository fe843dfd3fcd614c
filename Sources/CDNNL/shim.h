// oneDNN 2.6 C API (Debian libdnnl-dev). oneDNN uses the OpenMP (libgomp) CPU runtime here,
// so the thread count is set with omp_set_num_threads before primitives are created.
#include <oneapi/dnnl/dnnl.h>
void omp_set_num_threads(int n);
int omp_get_max_threads(void);
