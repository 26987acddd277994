/* benchmarks/avx512_panel/run.sh builds and runs this: the avx512 variant's ternary GEMMs bit-exact against
 * the ref variant, then the 2B layer's linears at m = 128 timed (avx512, another build's avx512, avx2). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dlfcn.h>
#include "bitnet_edge.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static unsigned long long rs=88172645463325252ull; static unsigned rnd(void){rs^=rs<<13;rs^=rs>>7;rs^=rs<<17;return (unsigned)rs;}
typedef int (*gi32)(int,const uint8_t*,size_t,size_t,const int8_t*,size_t,size_t,int32_t*,size_t);
typedef int (*gf32)(int,const uint8_t*,size_t,size_t,float,const int8_t*,size_t,size_t,const float*,float*,size_t);
int fails=0;
static void check(size_t n,size_t k,size_t m,int mode){ /* mode 0 random, 1 extremes (-128 x +1), 2 mixed extremes */
  int8_t*q=malloc(n*k),*x=malloc(m*k);
  for(size_t i=0;i<n*k;++i) q[i]= mode==1?1: mode==2?((rnd()&1)?1:-1):(int8_t)(rnd()%3)-1;
  for(size_t i=0;i<m*k;++i) x[i]= mode==1?-128: mode==2?((rnd()&1)?127:-128):(int8_t)(rnd()&255);
  float*xs=malloc(m*4); for(size_t i=0;i<m;++i) xs[i]=0.5f+(rnd()%1000)/300.0f;
  for(int b3=0;b3<2;++b3){
    size_t rb=b3?bne_ternary3_row_bytes(k):bne_ternary_row_bytes(k); uint8_t*w=malloc(n*rb);
    if(b3) bne_ternary3_pack(q,n,k,k,w,n*rb); else bne_ternary_pack(q,n,k,k,w,n*rb);
    int32_t*y1=malloc(m*n*4),*y2=malloc(m*n*4); float*f1=malloc(m*n*4),*f2=malloc(m*n*4);
    gi32 gi=b3?bne_ternary3_gemm_i32:bne_ternary_gemm_i32; gf32 gf=b3?bne_ternary3_gemm_f32:bne_ternary_gemm_f32;
    int r1=gi(1,w,n,k,x,m,k,y1,n), r2=gi(3,w,n,k,x,m,k,y2,n);
    int r3=gf(1,w,n,k,0.37f,x,m,k,xs,f1,n), r4=gf(3,w,n,k,0.37f,x,m,k,xs,f2,n);
    int bad = r1||r2||r3||r4|| memcmp(y1,y2,m*n*4) || memcmp(f1,f2,m*n*4);
    if(mode==1) for(size_t i=0;i<m*n;++i) if(y2[i]!=-128*(int)k) bad=1;
    if(bad){fails++; printf("FAIL n=%zu k=%zu m=%zu mode=%d b3=%d rc=%d%d%d%d\n",n,k,m,mode,b3,r1,r2,r3,r4);}
    free(w);free(y1);free(y2);free(f1);free(f2);
  }
  free(q);free(x);free(xs);
}
static double bench(void*lib,int backend,int b3,size_t n,size_t k,size_t m){
  gf32 gf=(gf32)dlsym(lib,b3?"bne_ternary3_gemm_f32":"bne_ternary_gemm_f32");
  size_t (*rbf)(size_t)=(size_t(*)(size_t))dlsym(lib,b3?"bne_ternary3_row_bytes":"bne_ternary_row_bytes");
  int (*pk)(const int8_t*,size_t,size_t,size_t,uint8_t*,size_t)=(int(*)(const int8_t*,size_t,size_t,size_t,uint8_t*,size_t))dlsym(lib,b3?"bne_ternary3_pack":"bne_ternary_pack");
  int8_t*q=malloc(n*k),*x=malloc(m*k); for(size_t i=0;i<n*k;++i)q[i]=(int8_t)(rnd()%3)-1; for(size_t i=0;i<m*k;++i)x[i]=(int8_t)(rnd()&255);
  size_t rb=rbf(k); uint8_t*w=malloc(n*rb); pk(q,n,k,k,w,n*rb); float*xs=malloc(m*4); for(size_t i=0;i<m;++i)xs[i]=1; float*y=malloc(m*n*4);
  double ts[9]; for(int r=0;r<9;++r){double t0=now(); gf(backend,w,n,k,0.5f,x,m,k,xs,y,n); ts[r]=now()-t0;}
  for(int i=1;i<9;++i)for(int j=i;j>1&&ts[j]<ts[j-1];--j){double t=ts[j];ts[j]=ts[j-1];ts[j-1]=t;}
  free(q);free(x);free(w);free(xs);free(y); return ts[4];
}
int main(int argc,char**argv){
  printf("avx512 supported: %d\n", bne_backend_supported(3));
  if(!bne_backend_supported(3)) return 2;
  size_t sh[][3]={{17,5,8},{16,256,8},{33,130,9},{40,6911,13},{20,641,64},{17,4,8},{31,1027,25},{48,2560,128},{130,640,65},{9,321,12},{33,4096,6}};
  for(int t=1;t<=4;t*=4){ bne_set_threads(t);
    for(size_t i=0;i<sizeof sh/sizeof sh[0];++i) check(sh[i][0],sh[i][1],sh[i][2],0);
    size_t ks[]={4,255,256,1027,65536}; for(int i=0;i<5;++i){check(17,ks[i],9,1);check(17,ks[i],13,2);}
  }
  printf("exactness: %s (%d failures)\n", fails?"FAILED":"all equal to ref", fails);
  void*cur=dlopen(argv[1],RTLD_NOW|RTLD_LOCAL), *old=dlopen(argv[2],RTLD_NOW|RTLD_LOCAL);
  if(!cur||!old){printf("dlopen failed %s\n",dlerror());return 3;}
  int (*st_c)(int)=(int(*)(int))dlsym(cur,"bne_set_threads"), (*st_o)(int)=(int(*)(int))dlsym(old,"bne_set_threads");
  size_t bs[][2]={{2560,2560},{640,2560},{6912,2560},{2560,6912}}; size_t mac[]={2,2,3,1}; /* per layer: q,o ; k,v ; gate,up ; down */
  for(int t=1;t<=2;++t){ st_c(t); st_o(t);
    for(int b3=0;b3<2;++b3){ double tc=0,to=0,t2=0,macs=0;
      for(int s=0;s<4;++s){ size_t n=bs[s][0],k=bs[s][1]; macs+=mac[s]*(double)n*k*128;
        tc+=mac[s]*bench(cur,3,b3,n,k,128); to+=mac[s]*bench(old,3,b3,n,k,128); t2+=mac[s]*bench(cur,2,b3,n,k,128); }
      printf("threads %d %s layer m=128: avx512 panel %.0f GMAC/s | other build's avx512 %.0f | avx2 panel %.0f\n",t,b3?"base3":"2bit ",macs/tc/1e9,macs/to/1e9,macs/t2/1e9);
    }
  }
  return fails?1:0;
}
