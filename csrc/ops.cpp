// Schemas of the hyperfused torch ops (namespace `hyperfused`). Backends register their kernels for these
// schemas under their dispatch keys (cpu/ here, cuda/ in the CUDA extension).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(hyperfused, m) {
  // Per-pair dot products sum(a[i] * b[i]) accumulated in float64, deterministic (fixed blocks, fixed
  // combination order). Returns a float64 tensor with one entry per pair.
  m.def("multi_tensor_dot(Tensor[] a, Tensor[] b) -> Tensor");
}

// A Python module so that `import hyperfused._C` loads the library and runs the registrations above.
static struct PyModuleDef hyperfused_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&hyperfused_module); }
