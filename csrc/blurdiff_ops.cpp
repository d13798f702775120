// The schemas of blurdiff_ops, declared once; each backend registers its kernels elsewhere
// (cpu/spectral_map_cpu.cpp, cuda/spectral_map_cuda.cu). Also the Python module `_C`, whose
// import loads this library and runs the registrations.
#include <Python.h>
#include <torch/library.h>

#include "cpu/avx512.h"
#include "schemas.h"

// setup.py passes the torch version as bare tokens (2.14.1+cu130): quotes do not survive the
// shell that ninja runs, so the string is made here.
#define BLURDIFF_STRINGIFY_(x) #x
#define BLURDIFF_STRINGIFY(x) BLURDIFF_STRINGIFY_(x)
#ifdef BLURDIFF_TORCH_VERSION_TOKENS
#define BLURDIFF_TORCH_VERSION BLURDIFF_STRINGIFY(BLURDIFF_TORCH_VERSION_TOKENS)
#else
#define BLURDIFF_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(blurdiff_ops, m) {
  BLURDIFF_SPECTRAL_SCHEMAS(m);
  BLURDIFF_EVEN_ODD_SCHEMAS(m);
  BLURDIFF_MAP_PATH_SCHEMAS(m);
}

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "Compiled kernels of blurdiff_ops.", -1,
                                          nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  PyModule_AddStringConstant(module, "torch_version", BLURDIFF_TORCH_VERSION);
#ifdef BLURDIFF_WITH_CUDA
  PyModule_AddObject(module, "with_cuda", Py_NewRef(Py_True));
#else
  PyModule_AddObject(module, "with_cuda", Py_NewRef(Py_False));
#endif
  // Built with the same flags as the CPU kernels: without OpenMP their at::parallel_for is serial.
#ifdef _OPENMP
  PyModule_AddObject(module, "with_openmp", Py_NewRef(Py_True));
#else
  PyModule_AddObject(module, "with_openmp", Py_NewRef(Py_False));
#endif
  // Whether the CPU kernels run their own AVX-512 code (cpu/avx512.h).
  PyModule_AddObject(module, "cpu_avx512", Py_NewRef(::blurdiff::avx512_enabled() ? Py_True : Py_False));
  return module;
}
