// Times every oneDNN implementation of a few fp32 NHWC convolutions (a reference tool; not built by SwiftPM).
//   gcc -O2 tools/probe_conv_impls.c -o /tmp/probe_conv_impls -ldnnl && OMP_NUM_THREADS=2 /tmp/probe_conv_impls
// Prints: shape, implementation name (first = oneDNN default choice), GFLOP/s. See docs/benchmarks.md.
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define CK(x) do{dnnl_status_t st_=(x); if(st_){printf("err %d at %s\n",st_,#x);exit(1);}}while(0)
void run(dnnl_engine_t eng, dnnl_stream_t st, int N,int C,int O,int H,int K){
  dnnl_memory_desc_t src,wei,dst,bias;
  dnnl_dims_t sd={N,C,H,H}, wd={O,C,K,K}, dd={N,O,H,H}, bd={O};
  CK(dnnl_memory_desc_init_by_tag(&src,4,sd,dnnl_f32,dnnl_nhwc));
  CK(dnnl_memory_desc_init_by_tag(&wei,4,wd,dnnl_f32,dnnl_format_tag_any));
  CK(dnnl_memory_desc_init_by_tag(&dst,4,dd,dnnl_f32,dnnl_nhwc));
  CK(dnnl_memory_desc_init_by_tag(&bias,1,bd,dnnl_f32,dnnl_a));
  dnnl_convolution_desc_t cd; dnnl_dims_t s1={1,1}, p1={K/2,K/2};
  CK(dnnl_convolution_forward_desc_init(&cd,dnnl_forward_inference,dnnl_convolution_direct,&src,&wei,&bias,&dst,s1,p1,p1));
  dnnl_primitive_desc_iterator_t itr; CK(dnnl_primitive_desc_iterator_create(&itr,&cd,NULL,eng,NULL));
  do {
    dnnl_primitive_desc_t pd = dnnl_primitive_desc_iterator_fetch(itr);
    const char* impl; dnnl_primitive_desc_query(pd,dnnl_query_impl_info_str,0,&impl);
    const dnnl_memory_desc_t* s=dnnl_primitive_desc_query_md(pd,dnnl_query_src_md,0);
    const dnnl_memory_desc_t* w=dnnl_primitive_desc_query_md(pd,dnnl_query_weights_md,0);
    const dnnl_memory_desc_t* d=dnnl_primitive_desc_query_md(pd,dnnl_query_dst_md,0);
    dnnl_memory_t ms,mw,md,mb;
    CK(dnnl_memory_create(&ms,s,eng,DNNL_MEMORY_ALLOCATE));CK(dnnl_memory_create(&mw,w,eng,DNNL_MEMORY_ALLOCATE));
    CK(dnnl_memory_create(&md,d,eng,DNNL_MEMORY_ALLOCATE));CK(dnnl_memory_create(&mb,&bias,eng,DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_t p; CK(dnnl_primitive_create(&p,pd));
    dnnl_exec_arg_t a[4]={{DNNL_ARG_SRC,ms},{DNNL_ARG_WEIGHTS,mw},{DNNL_ARG_DST,md},{DNNL_ARG_BIAS,mb}};
    for(int i=0;i<2;i++){CK(dnnl_primitive_execute(p,st,4,a));dnnl_stream_wait(st);}
    int it=0; double t0=now(); while(now()-t0<0.5){dnnl_primitive_execute(p,st,4,a);dnnl_stream_wait(st);it++;}
    double dt=(now()-t0)/it; double fl=2.0*N*O*C*K*K*H*H;
    printf("N%d C%d O%d H%d K%d %-26s %.1f GFLOP/s\n",N,C,O,H,K,impl,fl/dt*1e-9);
    dnnl_primitive_destroy(p); dnnl_primitive_desc_destroy(pd);
  } while (dnnl_primitive_desc_iterator_next(itr)==dnnl_success);
}
int main(){dnnl_engine_t e; dnnl_stream_t s; CK(dnnl_engine_create(&e,dnnl_cpu,0)); CK(dnnl_stream_create(&s,e,dnnl_stream_default_flags));
 int cfg[][5]={{16,32,32,32,3},{16,128,128,32,3},{16,256,256,16,3},{16,256,256,8,3},{16,384,128,32,1},{32,64,64,16,3}};
 for(int i=0;i<6;i++) run(e,s,cfg[i][0],cfg[i][1],cfg[i][2],cfg[i][3],cfg[i][4]);
}
