// fusedopt._native: the TensorFlow-free C ABI (fusedopt_native.h) as a
// Python module. Arrays are NumPy arrays (CPU) or device arrays that export
// __cuda_array_interface__ or DLPack (CuPy, PyTorch; CPU tensors through
// DLPack too). Every check happens before anything is written.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cc/core/checked_size.h"
#include "cc/native/fusedopt_native.h"
#include "cc/rules/numeric.h"
#if defined(FUSEDOPT_XLA_FFI)
#include "cc/xla/ffi_handler.h"
#endif

namespace py = pybind11;

namespace {

// The DLPack ABI (v0.x "dltensor" capsules), as the DLPack standard defines it.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
constexpr int kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13;
constexpr int kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4;

// The C ABI's dtype codes, and the module's own code for uint8 arrays: int8
// state's codes (FUSEDOPT_STATE_INT8), never a variable or gradient.
constexpr int kUint8 = 4;
const char* const kDTypeNames[5] = {"float16", "bfloat16", "float32", "float64", "uint8"};

int BufElemBytes(int dtype) { return dtype == kUint8 ? 1 : fusedopt::ElemBytesOf(dtype); }

// One array argument, resolved to a pointer.
struct Buf {
  void* ptr = nullptr;
  int dtype = -1;
  int device = FUSEDOPT_DEVICE_CPU;
  int device_id = -1;  // CUDA ordinal when known
  std::vector<int64_t> shape;
  py::object keep;  // keeps a DLPack capsule (and so the memory) alive
  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

[[noreturn]] void Fail(const std::string& msg) { throw py::value_error(msg); }

// Names an argument ("grads[3]") for error messages; the string is built only
// when there is an error (the per-array cost matters for calls over hundreds
// of arrays).
struct Label {
  const char* list;
  int index;
  std::string str() const { return std::string(list) + "[" + std::to_string(index) + "]"; }
};

std::string ShapeStr(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

bool Contiguous(const std::vector<int64_t>& shape, const int64_t* strides_elems) {
  if (strides_elems == nullptr) return true;
  for (int64_t d : shape) {
    if (d == 0) return true;  // no element: any strides (NumPy 2 gives 0)
  }
  int64_t expect = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides_elems[d] != expect) return false;
    expect *= shape[d];
  }
  return true;
}

// Note [byte order]: the kernels read and write elements in the machine's
// byte order. A NumPy array in the other order (np.load of a file written on
// a big-endian machine, or dtype ">f4") would be read as other numbers: a
// gradient (read only) is converted to a native copy, a variable or slot
// (written in place) is refused, since a converted copy would take the
// update and the caller's array would not.
Buf FromNumpy(const py::array& given, const Label& what, bool writable) {
  Buf b;
  py::array a = given;
  if (!given.dtype().attr("isnative").cast<bool>()) {
    const std::string name = py::str(given.dtype());
    if (writable) {
      Fail(what.str() + " has non-native byte order (dtype " + name + "); it is updated in "
           "place, so convert it first and pass the converted array: "
           "a = a.astype(a.dtype.newbyteorder('='))");
    }
    a = given.attr("astype")(given.dtype().attr("newbyteorder")("="));
  }
  const py::dtype dt = a.dtype();
  const char kind = dt.kind();
  const auto itemsize = dt.itemsize();
  if (kind == 'f' && itemsize == 2) b.dtype = 0;
  else if (kind == 'f' && itemsize == 4) b.dtype = 2;
  else if (kind == 'f' && itemsize == 8) b.dtype = 3;
  else if (itemsize == 2 && std::string(py::str(dt.attr("name"))) == "bfloat16") b.dtype = 1;
  else if (kind == 'u' && itemsize == 1) b.dtype = kUint8;
  else Fail(what.str() + " has dtype " + std::string(py::str(dt.attr("name"))) +
            "; use float16, bfloat16, float32 or float64");
  if (!(a.flags() & py::array::c_style)) {
    Fail(what.str() + " is not C-contiguous; pass a contiguous array (numpy.ascontiguousarray "
                "copies, and the update would not reach the original)");
  }
  if (writable && !a.writeable()) Fail(what.str() + " is read-only");
  for (py::ssize_t d = 0; d < a.ndim(); ++d) b.shape.push_back(a.shape(d));
  b.ptr = const_cast<void*>(a.data());
  b.keep = a;
  return b;
}

// The dtype code of a __cuda_array_interface__ typestr, -1 for one we do not
// read (PyTorch gives bfloat16 as "<V2").
int CaiDtype(const py::dict& cai) {
  if (!cai.contains("typestr")) return -1;
  const std::string typestr = py::str(cai["typestr"]);
  if (typestr == "<f2") return 0;
  if (typestr == "<f4") return 2;
  if (typestr == "<f8") return 3;
  if (typestr == "|u1" || typestr == "<u1") return kUint8;
  return -1;
}

// A __cuda_array_interface__ entry that must be a tuple of Python ints
// (shape, strides); a ValueError naming the argument otherwise.
std::vector<int64_t> CaiInts(const py::dict& cai, const char* key, const Label& what) {
  const py::object v = cai[key];
  if (!py::isinstance<py::tuple>(v) && !py::isinstance<py::list>(v)) {
    Fail(what.str() + ": __cuda_array_interface__['" + key + "'] must be a tuple of ints, got " +
         std::string(py::str(py::type::of(v).attr("__name__"))));
  }
  std::vector<int64_t> out;
  for (auto d : py::reinterpret_borrow<py::sequence>(v)) {
    if (!py::isinstance<py::int_>(d) || py::isinstance<py::bool_>(d)) {
      Fail(what.str() + ": __cuda_array_interface__['" + key + "'] must be a tuple of ints, "
           "holds a " + std::string(py::str(py::type::of(d).attr("__name__"))));
    }
    try {
      out.push_back(d.cast<int64_t>());
    } catch (const py::cast_error&) {
      Fail(what.str() + ": __cuda_array_interface__['" + key + "'] holds " +
           std::string(py::str(d)) + ", outside int64");
    }
  }
  return out;
}

// Reads a __cuda_array_interface__ (version 2 or 3): typestr, shape, data =
// (pointer, read_only) and optional strides, each checked for its type: a
// malformed interface is a ValueError naming the argument and the entry.
Buf FromCudaArrayInterface(const py::object& obj, const py::dict& cai, const Label& what,
                           bool writable) {
  Buf b;
  b.device = FUSEDOPT_DEVICE_CUDA;
  for (const char* key : {"typestr", "shape", "data"}) {
    if (!cai.contains(key)) {
      Fail(what.str() + ": its __cuda_array_interface__ has no '" + key + "' entry");
    }
  }
  if (!py::isinstance<py::str>(cai["typestr"])) {
    Fail(what.str() + ": __cuda_array_interface__['typestr'] must be a str");
  }
  b.dtype = CaiDtype(cai);
  if (b.dtype < 0) {
    Fail(what.str() + " has element type " + std::string(py::str(cai["typestr"])) +
         "; use float16, bfloat16, float32 or float64");
  }
  b.shape = CaiInts(cai, "shape", what);
  const py::object data_obj = cai["data"];
  if (!py::isinstance<py::tuple>(data_obj) || py::len(data_obj) != 2 ||
      !py::isinstance<py::int_>(py::tuple(data_obj)[0])) {
    Fail(what.str() + ": __cuda_array_interface__['data'] must be a tuple (pointer: int, "
         "read_only: bool)");
  }
  const py::tuple data = data_obj;
  try {
    b.ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  } catch (const py::cast_error&) {
    Fail(what.str() + ": __cuda_array_interface__['data'][0] is not a pointer (" +
         std::string(py::str(data[0])) + ")");
  }
  if (writable && py::bool_(data[1])) Fail(what.str() + " is read-only");
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const std::vector<int64_t> byte_strides = CaiInts(cai, "strides", what);
    if (byte_strides.size() != b.shape.size()) {
      Fail(what.str() + ": __cuda_array_interface__ has " + std::to_string(byte_strides.size()) +
           " strides for " + std::to_string(b.shape.size()) + " dimensions");
    }
    std::vector<int64_t> strides;
    const int64_t item = BufElemBytes(b.dtype);
    for (const int64_t bytes : byte_strides) {
      if (bytes % item != 0) Fail(what.str() + " has strides that are not whole elements");
      strides.push_back(bytes / item);
    }
    if (!Contiguous(b.shape, strides.data())) Fail(what.str() + " is not C-contiguous");
  }
  b.keep = obj;
  return b;
}

Buf FromDlpack(const py::object& obj, const Label& what) {
  py::object capsule = obj.attr("__dlpack__")();
  if (!PyCapsule_IsValid(capsule.ptr(), "dltensor")) {
    Fail(what.str() + ": __dlpack__() did not return a 'dltensor' capsule");
  }
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  const DLTensor& t = m->dl_tensor;
  Buf b;
  if (t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost) {
    b.device = FUSEDOPT_DEVICE_CPU;
  } else if (t.device.device_type == kDLCUDA || t.device.device_type == kDLCUDAManaged) {
    b.device = FUSEDOPT_DEVICE_CUDA;
    b.device_id = t.device.device_id;
  } else {
    Fail(what.str() + " lives on DLPack device type " + std::to_string(t.device.device_type) +
         "; fusedopt runs on the CPU and on CUDA devices");
  }
  if (t.dtype.lanes != 1) Fail(what.str() + " has vector elements");
  if (t.dtype.code == kDLFloat && t.dtype.bits == 16) b.dtype = 0;
  else if (t.dtype.code == kDLBfloat && t.dtype.bits == 16) b.dtype = 1;
  else if (t.dtype.code == kDLFloat && t.dtype.bits == 32) b.dtype = 2;
  else if (t.dtype.code == kDLFloat && t.dtype.bits == 64) b.dtype = 3;
  else if (t.dtype.code == kDLUInt && t.dtype.bits == 8) b.dtype = kUint8;
  else Fail(what.str() + " has a DLPack dtype (code " + std::to_string(t.dtype.code) + ", " +
            std::to_string(t.dtype.bits) + " bits) other than float16/bfloat16/float32/float64");
  b.shape.assign(t.shape, t.shape + t.ndim);
  if (!Contiguous(b.shape, t.strides)) Fail(what.str() + " is not C-contiguous");
  b.ptr = static_cast<char*>(t.data) + t.byte_offset;
  b.keep = capsule;  // its destructor calls the producer's deleter
  return b;
}

// PyTorch CUDA tensors read through their own accessors (data_ptr, dtype,
// shape, is_contiguous): PyTorch's __cuda_array_interface__ and __dlpack__
// are Python code, ~10 us an array, which a call over hundreds of tensors
// feels. False (and `b` untouched) for anything else, CPU tensors included.
bool FromTorchCuda(const py::object& obj, const Label& what, Buf* b) {
  const py::handle type = reinterpret_cast<PyObject*>(Py_TYPE(obj.ptr()));
  const py::object module = py::getattr(type, "__module__", py::none());
  if (!py::isinstance<py::str>(module) || std::string(py::str(module)).rfind("torch", 0) != 0 ||
      !py::hasattr(obj, "data_ptr") || !py::hasattr(obj, "is_cuda")) {
    return false;
  }
  if (!obj.attr("is_cuda").cast<bool>()) return false;
  const std::string dt = py::str(obj.attr("dtype"));
  if (dt == "torch.float16") b->dtype = 0;
  else if (dt == "torch.bfloat16") b->dtype = 1;
  else if (dt == "torch.float32") b->dtype = 2;
  else if (dt == "torch.float64") b->dtype = 3;
  else if (dt == "torch.uint8") b->dtype = kUint8;
  else Fail(what.str() + " has dtype " + dt + "; use float16, bfloat16, float32 or float64");
  if (!obj.attr("is_contiguous")().cast<bool>()) {
    Fail(what.str() + " is not C-contiguous; pass a contiguous tensor (.contiguous() copies, "
                      "and the update would not reach the original)");
  }
  b->device = FUSEDOPT_DEVICE_CUDA;
  b->device_id = obj.attr("get_device")().cast<int>();
  for (auto d : py::tuple(obj.attr("shape"))) b->shape.push_back(d.cast<int64_t>());
  b->ptr = reinterpret_cast<void*>(obj.attr("data_ptr")().cast<uintptr_t>());
  b->keep = obj;
  return true;
}

Buf ToBufUnchecked(const py::handle& h, const Label& what, bool writable);

// An array argument, with its shape checked (Note [checked sizes]): no
// negative dimension, and an element count that int64 holds (a device
// array's interface can claim any shape). uint8 arrays (int8 state's codes)
// only where allow_uint8.
Buf ToBuf(const py::handle& h, const Label& what, bool writable, bool allow_uint8 = false) {
  Buf b = ToBufUnchecked(h, what, writable);
  if (b.dtype == kUint8 && !allow_uint8) {
    Fail(what.str() + " has dtype uint8; use float16, bfloat16, float32 or float64");
  }
  int64_t n = 0;
  if (!fusedopt::CheckedElementCount(b.shape.data(), static_cast<int>(b.shape.size()), &n)) {
    Fail(what.str() + " has shape " + ShapeStr(b.shape) +
         ": a negative dimension or more elements than int64 counts");
  }
  return b;
}

Buf ToBufUnchecked(const py::handle& h, const Label& what, bool writable) {
  py::object obj = py::reinterpret_borrow<py::object>(h);
  if (py::isinstance<py::array>(obj)) return FromNumpy(obj.cast<py::array>(), what, writable);
  {
    Buf b;
    if (FromTorchCuda(obj, what, &b)) return b;
  }
  {
    // Read once: the property builds a new dict on every access.
    py::object cai;
    try {
      cai = py::getattr(obj, "__cuda_array_interface__", py::none());
    } catch (const py::error_already_set&) {
      cai = py::none();  // e.g. PyTorch bfloat16: no typestr; DLPack below
    }
    // A typestr we do not read (PyTorch gives bfloat16 as "<V2") goes through
    // DLPack, which names bfloat16, when the object has it.
    if (!cai.is_none()) {
      if (!py::isinstance<py::dict>(cai)) {
        Fail(what.str() + ": its __cuda_array_interface__ is a " +
             std::string(py::str(py::type::of(cai).attr("__name__"))) + ", not a dict");
      }
      const py::dict d = cai.cast<py::dict>();
      if (CaiDtype(d) >= 0 || !py::hasattr(obj, "__dlpack__")) {
        return FromCudaArrayInterface(obj, d, what, writable);
      }
    }
  }
  if (py::hasattr(obj, "__dlpack__")) return FromDlpack(obj, what);
  Fail(what.str() + " is a " + std::string(py::str(py::type::of(obj).attr("__name__"))) +
       "; pass a NumPy array or a device array with DLPack or __cuda_array_interface__");
}

// "a, b, c": the names name(0) .. name(count - 1).
template <typename NameOf>
std::string JoinNames(int count, NameOf name) {
  std::string names;
  for (int k = 0; k < count; ++k) names += std::string(k ? ", " : "") + name(k);
  return names;
}

int RuleIndex(const std::string& rule) {
  // A name with an embedded NUL is no rule's name ("name\0junk" is not "name").
  const int r = rule.find('\0') == std::string::npos ? fusedopt_rule_index(rule.c_str()) : -1;
  if (r >= 0) return r;
  std::string shown;
  for (char ch : rule) shown += ch == '\0' ? std::string("\\x00") : std::string(1, ch);
  Fail("unknown rule '" + shown + "'; the rules are " +
       JoinNames(fusedopt_rule_count(), [](int k) { return fusedopt_rule_name(k); }));
}

// Raises ValueError for a key of `d` that is not one of the rule's `count`
// names (`what`: "hyperparameter", "slot"; `listing`: how the names are introduced).
template <typename NameOf>
void CheckKeys(const py::dict& d, int count, NameOf name, const char* what,
               const std::string& rule_name, const char* listing) {
  for (auto item : d) {
    const std::string key = py::str(item.first);
    bool known = false;
    for (int k = 0; k < count; ++k) known |= key == name(k);
    if (!known) {
      Fail(std::string("unknown ") + what + " '" + key + "' for " + rule_name + "; " + listing +
           " " + JoinNames(count, name));
    }
  }
}

void Check(int code, const char* err) {
  if (code == FUSEDOPT_OK) return;
  if (code == FUSEDOPT_INVALID_ARGUMENT) throw py::value_error(err);
  if (code == FUSEDOPT_OUT_OF_MEMORY) {
    PyErr_SetString(PyExc_MemoryError, err);
    throw py::error_already_set();
  }
  throw std::runtime_error(err);
}

// What apply and sparse_apply share: the rule's hyperparameters, the slot
// lists and every array, checked.
struct Prepared {
  fusedopt_call call;
  std::vector<double> scalars;
  std::vector<Buf> vars, grads;
  std::vector<std::vector<Buf>> slots;  // [rule slot][tensor], empty if not given
  std::vector<void*> var_ptrs, slot_ptrs;
  std::vector<const void*> grad_ptrs;
  std::vector<int64_t> sizes;
  std::vector<unsigned char> rank0;
  // int8 state: absmax arrays [rule slot][tensor], their pointers [n][3],
  // and the rows of each variable's blocks.
  std::vector<std::vector<Buf>> absmax;
  std::vector<std::string> absmax_labels;  // "absmax['m']", [rule slot]
  std::vector<float*> absmax_ptrs;
  std::vector<int64_t> row_sizes;
  fusedopt_tensors tensors;
};

struct Options {
  int64_t step;
  bool nesterov, epsilon_outside_sqrt;
  double schedule_decay;
  bool grappler_form, constant_folding;
  double grad_scale, clip_value, clip_norm, global_clip_norm;
  bool skip_nonfinite;
  uintptr_t stream;
  int threads;
  bool tf_training_op_form = false;
  // Low-precision state (Note [low-precision state]).
  std::string state_dtype = "float32";
  py::object absmax = py::none();
  py::object rounding_seed = py::int_(0);
  bool stochastic_rounding = false;
};

// state_dtype's codes (fusedopt.ops' names: "float32" keeps the variables'
// dtype, the ops' "same").
int StateFormatOf(const std::string& state_dtype) {
  if (state_dtype == "float32") return FUSEDOPT_STATE_SAME;
  if (state_dtype == "bfloat16") return FUSEDOPT_STATE_BFLOAT16;
  if (state_dtype == "int8") return FUSEDOPT_STATE_INT8;
  Fail("state_dtype must be one of 'bfloat16', 'float32', 'int8', got '" + state_dtype + "'");
}

// Any Python integer (or NumPy integer) as its low 64 bits, as fusedopt.ops
// takes rounding_seed.
uint64_t SeedBits(const py::object& seed) {
  if (py::isinstance<py::float_>(seed)) Fail("rounding_seed must be an integer, got a float");
  PyObject* index = PyNumber_Index(seed.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    Fail("rounding_seed must be an integer, got a " +
         std::string(py::str(py::type::of(seed).attr("__name__"))));
  }
  const py::object i = py::reinterpret_steal<py::object>(index);
  const py::object low = i & py::int_(static_cast<unsigned long long>(~uint64_t{0}));
  return low.cast<uint64_t>();
}

// The rules with low-precision state, "a, b and c".
std::string StateRules() {
  std::vector<std::string> names;
  for (int r = 0; r < fusedopt_rule_count(); ++r) {
    if (fusedopt_rule_takes_option(r, "state_format", 0) == 1) names.push_back(fusedopt_rule_name(r));
  }
  std::string out;
  for (size_t k = 0; k < names.size(); ++k) {
    out += (k == 0 ? "" : (k + 1 == names.size() ? " and " : ", ")) + names[k];
  }
  return out;
}

// The int8 blocks' layout of a variable of `shape` (fusedopt.state.layout):
// (rows, row_size), rows of the first dimension for rank >= 2.
std::pair<int64_t, int64_t> QuantRows(const std::vector<int64_t>& shape) {
  int64_t elements = 1;
  for (int64_t d : shape) elements *= d;
  if (shape.size() >= 2 && shape[0] > 0) return {shape[0], elements / shape[0]};
  return {1, elements};
}
constexpr int64_t kQuantBlock = 256;  // cc/rules/state_format.h

void Prepare(const std::string& rule_name, const py::list& vars, const py::list& grads,
             const py::object& slots_obj, const py::dict& hparams, const Options& o,
             bool sparse, Prepared* p) {
  const int rule = RuleIndex(rule_name);
  fusedopt_call_init(&p->call);
  p->call.rule = rule;
  // Hyperparameters by name; weight_decay defaults to 0.
  const int ns = fusedopt_rule_num_scalars(rule);
  auto scalar_name = [rule](int k) { return fusedopt_rule_scalar_name(rule, k); };
  CheckKeys(hparams, ns, scalar_name, "hyperparameter", rule_name, "it takes");
  std::map<std::string, double> given;
  for (auto item : hparams) {
    const std::string key = py::str(item.first);
    try {
      given[key] = item.second.cast<double>();
    } catch (const py::cast_error&) {
      Fail("hyperparameter '" + key + "' must be a number");
    }
  }
  for (int k = 0; k < ns; ++k) {
    const std::string name = fusedopt_rule_scalar_name(rule, k);
    auto it = given.find(name);
    if (it == given.end()) {
      if (name != "weight_decay") Fail(rule_name + " needs the hyperparameter '" + name + "'");
      p->scalars.push_back(0.0);
    } else {
      p->scalars.push_back(it->second);
    }
  }
  p->call.scalars = p->scalars.data();
  p->call.num_scalars = ns;
  p->call.step = o.step;
  p->call.nesterov = o.nesterov;
  p->call.epsilon_outside_sqrt = o.epsilon_outside_sqrt;
  p->call.schedule_decay = o.schedule_decay;
  p->call.grappler_form = o.grappler_form;
  p->call.constant_folding = o.constant_folding;
  p->call.tf_training_op_form = o.tf_training_op_form ? 1 : 0;
  p->call.grad_scale = o.grad_scale;
  p->call.clip_value = o.clip_value;
  p->call.clip_norm = o.clip_norm;
  p->call.global_clip_norm = o.global_clip_norm;
  p->call.skip_nonfinite = o.skip_nonfinite;
  p->call.stream = reinterpret_cast<void*>(o.stream);
  p->call.num_threads = o.threads;
  // Low-precision state: the slots' dtype follows state_dtype.
  const int state = StateFormatOf(o.state_dtype);
  p->call.state_format = state;
  p->call.stochastic_rounding = o.stochastic_rounding ? 1 : 0;
  p->call.rounding_seed = SeedBits(o.rounding_seed);
  if ((state != FUSEDOPT_STATE_SAME || o.stochastic_rounding) &&
      fusedopt_rule_takes_option(rule, "state_format", sparse ? 1 : 0) != 1) {
    Fail((state != FUSEDOPT_STATE_SAME ? "state_dtype='" + o.state_dtype + "'"
                                       : std::string("stochastic_rounding")) +
         " is for the rules " + StateRules() + "; " + rule_name + " has none");
  }
  const bool int8 = state == FUSEDOPT_STATE_INT8;
  if (!int8 && !o.absmax.is_none() && !(py::isinstance<py::dict>(o.absmax) && py::len(o.absmax) == 0)) {
    Fail("absmax is for state_dtype='int8', got state_dtype='" + o.state_dtype + "'");
  }

  const int n = static_cast<int>(vars.size());
  if (static_cast<int>(grads.size()) != n) {
    Fail("got " + std::to_string(n) + " variables but " + std::to_string(grads.size()) +
         " gradients");
  }
  for (int i = 0; i < n; ++i) {
    p->vars.push_back(ToBuf(vars[i], Label{"vars", i}, true));
    p->grads.push_back(ToBuf(grads[i], Label{sparse ? "grad_values" : "grads", i}, false));
  }
  // Slot lists by name.
  const int nslots = fusedopt_rule_num_slots(rule);
  if (!slots_obj.is_none() && !py::isinstance<py::dict>(slots_obj)) {
    Fail("slots must be a dict {slot name: list of arrays, one per variable}, got a " +
         std::string(py::str(py::type::of(slots_obj).attr("__name__"))));
  }
  py::dict slots = slots_obj.is_none() ? py::dict() : slots_obj.cast<py::dict>();
  CheckKeys(slots, nslots, [rule](int k) { return fusedopt_rule_slot_name(rule, k); }, "slot",
            rule_name, "its slots are");
  p->slots.resize(nslots);
  std::memset(&p->tensors, 0, sizeof(p->tensors));
  for (int k = 0; k < nslots; ++k) {
    const std::string name = fusedopt_rule_slot_name(rule, k);
    py::list list;
    if (slots.contains(name.c_str()) && !slots[name.c_str()].is_none()) {
      const py::object given_list = slots[name.c_str()];
      if (!py::isinstance<py::list>(given_list) && !py::isinstance<py::tuple>(given_list)) {
        Fail("slots['" + name + "'] must be a list of arrays, one per variable, got a " +
             std::string(py::str(py::type::of(given_list).attr("__name__"))));
      }
      list = py::list(given_list);
    }
    if (list.size() == 0) {
      if (!fusedopt_rule_slot_optional(rule, k) && n > 0) {
        Fail(rule_name + " needs the slot list '" + name + "'");
      }
      p->tensors.slot_given[k] = n == 0 ? !fusedopt_rule_slot_optional(rule, k) : 0;
      continue;
    }
    if (static_cast<int>(list.size()) != n) {
      Fail("slot list '" + name + "' has " + std::to_string(list.size()) + " entries but there are " +
           std::to_string(n) + " variables");
    }
    p->tensors.slot_given[k] = 1;
    for (int i = 0; i < n; ++i) {
      p->slots[k].push_back(
          ToBuf(list[i], Label{fusedopt_rule_slot_name(rule, k), i}, true,
                /*allow_uint8=*/state != FUSEDOPT_STATE_SAME));
    }
  }
  // int8 state's absmax: {slot name: list of float32 arrays, one per
  // variable}, for every slot list given (fusedopt.ops' absmax).
  p->absmax.resize(nslots);
  p->absmax_labels.resize(nslots);
  if (int8) {
    if (!o.absmax.is_none() && !py::isinstance<py::dict>(o.absmax)) {
      Fail("absmax must be a dict {slot name: list of float32 arrays, one per variable}, got a " +
           std::string(py::str(py::type::of(o.absmax).attr("__name__"))));
    }
    const py::dict absmax = o.absmax.is_none() ? py::dict() : o.absmax.cast<py::dict>();
    std::vector<std::string> given_names, missing, extra;
    for (int k = 0; k < nslots; ++k) {
      if (!p->slots[k].empty()) given_names.push_back(fusedopt_rule_slot_name(rule, k));
    }
    auto has = [](const std::vector<std::string>& v, const std::string& x) {
      return std::find(v.begin(), v.end(), x) != v.end();
    };
    for (const std::string& k : given_names) {
      if (!absmax.contains(k.c_str()) || absmax[k.c_str()].is_none()) missing.push_back(k);
    }
    for (auto item : absmax) {
      const std::string key = py::str(item.first);
      if (!has(given_names, key) && !item.second.is_none()) extra.push_back(key);
    }
    if (!missing.empty() || !extra.empty()) {
      auto show = [](const std::vector<std::string>& v) {
        std::string out = "[";
        for (size_t k = 0; k < v.size(); ++k) out += (k ? ", '" : "'") + v[k] + "'";
        return out + "]";
      };
      Fail("int8 state takes one absmax list per slot list given (" + show(given_names) +
           "): missing " + show(missing) + ", unexpected " + show(extra) +
           " (make them with fusedopt.state.num_blocks)");
    }
    for (int k = 0; k < nslots; ++k) {
      if (p->slots[k].empty()) continue;
      const std::string name = fusedopt_rule_slot_name(rule, k);
      p->absmax_labels[k] = "absmax['" + name + "']";
      const py::object given_list = absmax[name.c_str()];
      if (!py::isinstance<py::list>(given_list) && !py::isinstance<py::tuple>(given_list)) {
        Fail(p->absmax_labels[k] + " must be a list of float32 arrays, one per variable, got a " +
             std::string(py::str(py::type::of(given_list).attr("__name__"))));
      }
      const py::list list(given_list);
      if (static_cast<int>(list.size()) != n) {
        Fail(p->absmax_labels[k] + " has " + std::to_string(list.size()) +
             " entries but there are " + std::to_string(n) + " variables");
      }
      for (int i = 0; i < n; ++i) {
        p->absmax[k].push_back(ToBuf(list[i], Label{p->absmax_labels[k].c_str(), i}, true));
      }
    }
  }
  // One dtype, one device, matching shapes.
  const Buf* first = n > 0 ? &p->vars[0] : nullptr;
  auto same = [&](const Buf& b, const Label& what) {
    if (b.dtype != first->dtype) {
      Fail(what.str() + " is " + kDTypeNames[b.dtype] + " but vars[0] is " + kDTypeNames[first->dtype] +
           "; one call takes one dtype");
    }
    if (b.device != first->device ||
        (b.device_id >= 0 && first->device_id >= 0 && b.device_id != first->device_id)) {
      Fail(what.str() + " is on another device than vars[0]; one call runs on one device");
    }
  };
  for (int i = 0; i < n; ++i) {
    same(p->vars[i], Label{"vars", i});
    same(p->grads[i], Label{sparse ? "grad_values" : "grads", i});
    if (!sparse && p->grads[i].shape != p->vars[i].shape) {
      Fail(Label{"grads", i}.str() + " has shape " + ShapeStr(p->grads[i].shape) + " but " +
           Label{"vars", i}.str() + " has shape " + ShapeStr(p->vars[i].shape));
    }
    for (int k = 0; k < nslots; ++k) {
      if (p->slots[k].empty()) continue;
      const Label what{fusedopt_rule_slot_name(rule, k), i};
      const Buf& slot = p->slots[k][i];
      if (state == FUSEDOPT_STATE_SAME) {
        same(slot, what);
      } else {
        // bfloat16 slots, or int8 state's uint8 codes.
        const int want = int8 ? kUint8 : 1;
        if (slot.dtype != want) {
          Fail(what.str() + " is " + kDTypeNames[slot.dtype] + " but state_dtype='" +
               o.state_dtype + "' stores slots as " + kDTypeNames[want]);
        }
        Buf as_var = slot;
        as_var.dtype = first->dtype;
        same(as_var, what);  // the device
      }
      if (slot.shape != p->vars[i].shape) {
        Fail(what.str() + " has shape " + ShapeStr(slot.shape) + " but " +
             Label{"vars", i}.str() + " has shape " + ShapeStr(p->vars[i].shape));
      }
      if (!int8) continue;
      const Label awhat{p->absmax_labels[k].c_str(), i};
      const Buf& a = p->absmax[k][i];
      if (a.dtype != 2) {
        Fail(awhat.str() + " is " + kDTypeNames[a.dtype] + "; absmax arrays are float32");
      }
      Buf as_var = a;
      as_var.dtype = first->dtype;
      same(as_var, awhat);  // the device
      const auto [rows, row_size] = QuantRows(p->vars[i].shape);
      const int64_t per_row = (row_size + kQuantBlock - 1) / kQuantBlock;
      const int64_t blocks = rows * per_row;
      if (a.shape != std::vector<int64_t>{blocks}) {
        Fail(awhat.str() + " has shape " + ShapeStr(a.shape) + " but " + Label{"vars", i}.str() +
             " of shape " + ShapeStr(p->vars[i].shape) + " has " + std::to_string(blocks) +
             " int8 blocks (" + std::to_string(rows) + " rows of " + std::to_string(per_row) +
             " blocks of at most 256 elements): pass shape (" + std::to_string(blocks) +
             ",) (fusedopt.state.num_blocks)");
      }
    }
  }
  p->call.dtype = first != nullptr ? first->dtype : 2;
  p->call.device = first != nullptr ? first->device : FUSEDOPT_DEVICE_CPU;
  p->slot_ptrs.assign(static_cast<size_t>(3) * n, nullptr);
  if (int8) p->absmax_ptrs.assign(static_cast<size_t>(3) * n, nullptr);
  for (int i = 0; i < n; ++i) {
    p->var_ptrs.push_back(p->vars[i].ptr);
    p->grad_ptrs.push_back(p->grads[i].ptr);
    p->sizes.push_back(p->vars[i].size());
    p->rank0.push_back(p->vars[i].shape.empty() ? 1 : 0);
    if (int8) p->row_sizes.push_back(QuantRows(p->vars[i].shape).second);
    for (int k = 0; k < nslots; ++k) {
      if (p->slots[k].empty()) continue;
      p->slot_ptrs[3 * i + k] = p->slots[k][i].ptr;
      if (int8) p->absmax_ptrs[3 * i + k] = static_cast<float*>(p->absmax[k][i].ptr);
    }
  }
  if (int8) {
    p->tensors.absmax = p->absmax_ptrs.data();
    p->tensors.row_sizes = p->row_sizes.data();
  }
  p->tensors.n = n;
  p->tensors.vars = p->var_ptrs.data();
  p->tensors.slots = p->slot_ptrs.data();
  p->tensors.grads = p->grad_ptrs.data();
  p->tensors.sizes = p->sizes.data();
  p->tensors.rank0 = p->rank0.data();
}

bool Apply(const std::string& rule, const py::list& vars, const py::list& grads,
           const py::object& slots, const py::dict& hparams, const Options& o) {
  Prepared p;
  Prepare(rule, vars, grads, slots, hparams, o, false, &p);
  int skipped = 0;
  char err[1024] = {0};
  int code;
  {
    py::gil_scoped_release release;
    code = fusedopt_apply(&p.call, &p.tensors, &skipped, err, sizeof(err));
  }
  Check(code, err);
  return skipped != 0;
}

bool SparseApply(const std::string& rule, const py::list& vars, const py::list& values,
                 const py::list& indices, const py::object& slots, const py::dict& hparams,
                 const std::string& mode, const Options& o) {
  if (mode != "exact" && mode != "lazy") Fail("mode must be 'exact' or 'lazy', got '" + mode + "'");
  Prepared p;
  Prepare(rule, vars, values, slots, hparams, o, true, &p);
  const int n = p.tensors.n;
  if (static_cast<int>(indices.size()) != n) {
    Fail("got " + std::to_string(n) + " variables but " + std::to_string(indices.size()) +
         " index arrays");
  }
  std::vector<py::array_t<int64_t, py::array::c_style | py::array::forcecast>> idx;
  std::vector<const int64_t*> idx_ptrs;
  std::vector<int64_t> counts, rows, row_sizes;
  for (int i = 0; i < n; ++i) {
    const std::string s = "[" + std::to_string(i) + "]";
    py::object obj = indices[i];
    if (!py::isinstance<py::array>(obj)) Fail("grad_indices" + s + " must be a NumPy integer array");
    py::array raw = obj.cast<py::array>();
    if (raw.dtype().kind() != 'i' && raw.dtype().kind() != 'u') {
      Fail("grad_indices" + s + " must be integers (int32 or int64)");
    }
    if (raw.ndim() != 1) Fail("grad_indices" + s + " must be 1-D");
    idx.emplace_back(raw);
    idx_ptrs.push_back(idx.back().data());
    const Buf& v = p.vars[i];
    if (v.shape.empty()) Fail("vars" + s + " is a scalar; sparse updates need rank >= 1");
    if (p.call.state_format == FUSEDOPT_STATE_INT8 && v.shape.size() < 2) {
      Fail("vars" + s + " has rank 1: int8 state's blocks span a rank-1 variable's elements, so "
           "its sparse updates need rank >= 2 (use a dense update)");
    }
    std::vector<int64_t> want = v.shape;
    want[0] = raw.shape(0);
    if (p.grads[i].shape != want) {
      Fail("grad_values" + s + " has shape " + ShapeStr(p.grads[i].shape) + " but vars" + s +
           " of shape " + ShapeStr(v.shape) + " with " + std::to_string(raw.shape(0)) +
           " indices needs " + ShapeStr(want));
    }
    counts.push_back(raw.shape(0));
    rows.push_back(v.shape[0]);
    int64_t row_size = 1;
    for (size_t d = 1; d < v.shape.size(); ++d) row_size *= v.shape[d];
    row_sizes.push_back(row_size);
  }
  fusedopt_sparse sp{idx_ptrs.data(), counts.data(), rows.data(), row_sizes.data(),
                     mode == "exact" ? 1 : 0};
  int skipped = 0;
  char err[1024] = {0};
  int code;
  {
    py::gil_scoped_release release;
    code = fusedopt_sparse_apply(&p.call, &p.tensors, &sp, &skipped, err, sizeof(err));
  }
  Check(code, err);
  return skipped != 0;
}

py::tuple GradStats(const py::list& grads, uintptr_t stream, int threads) {
  std::vector<Buf> bufs;
  std::vector<const void*> ptrs;
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < grads.size(); ++i) {
    bufs.push_back(ToBuf(grads[i], Label{"grads", static_cast<int>(i)}, false));
    if (bufs.back().dtype != bufs[0].dtype || bufs.back().device != bufs[0].device) {
      Fail("grads[" + std::to_string(i) + "] differs from grads[0] in dtype or device");
    }
    ptrs.push_back(bufs.back().ptr);
    sizes.push_back(bufs.back().size());
  }
  const int n = static_cast<int>(bufs.size());
  std::vector<double> sums(n, 0.0);
  int nonfinite = 0;
  char err[1024] = {0};
  int code;
  {
    py::gil_scoped_release release;
    code = fusedopt_grad_stats(n ? bufs[0].dtype : 2, n ? bufs[0].device : FUSEDOPT_DEVICE_CPU,
                               reinterpret_cast<void*>(stream), threads, n, ptrs.data(),
                               sizes.data(), sums.data(), &nonfinite, err, sizeof(err));
  }
  Check(code, err);
  return py::make_tuple(sums, nonfinite != 0);
}

// fusedopt_adafactor_apply over arrays (Note [Adafactor passes]).
void AdafactorApply(const py::list& vars, const py::list& grads, const py::list& r,
                    const py::list& c, const py::list& v, double lr, int64_t step,
                    double beta_2_decay, double epsilon_1, double epsilon_2,
                    double clip_threshold, double weight_decay, bool grappler_form,
                    int threads) {
  const size_t n = vars.size();
  for (const auto& [list, name] : {std::pair<const py::list*, const char*>{&grads, "grads"},
                                   {&r, "r"}, {&c, "c"}, {&v, "v"}}) {
    if (list->size() != n) {
      Fail(std::string(name) + " has " + std::to_string(list->size()) + " entries but there are " +
           std::to_string(n) + " variables");
    }
  }
  std::vector<Buf> bufs;  // keeps DLPack capsules alive
  bufs.reserve(5 * n);
  std::vector<void*> var_ptrs(n), r_ptrs(n, nullptr), c_ptrs(n, nullptr), v_ptrs(n);
  std::vector<const void*> grad_ptrs(n);
  std::vector<std::vector<int64_t>> shapes(n);
  std::vector<const int64_t*> shape_ptrs(n);
  std::vector<int> ranks(n);
  int dtype = -1;  // vars[0]'s, once converted
  // The array's pointer, after checking its device, dtype and (want != NULL) shape.
  auto take = [&](const py::handle& h, const char* list, size_t i, bool writable,
                  const std::vector<int64_t>* want) -> void* {
    bufs.push_back(ToBuf(h, Label{list, static_cast<int>(i)}, writable));
    const Buf& b = bufs.back();
    if (b.device != FUSEDOPT_DEVICE_CPU) {
      Fail(std::string(list) + "[" + std::to_string(i) +
           "] is on a CUDA device; Adafactor has no CUDA kernel yet: pass NumPy arrays");
    }
    if (dtype < 0) dtype = b.dtype;  // vars[0] comes first
    if (b.dtype != dtype) {
      Fail(std::string(list) + "[" + std::to_string(i) + "] is " + kDTypeNames[b.dtype] +
           " but vars[0] is " + kDTypeNames[dtype]);
    }
    if (want != nullptr && b.shape != *want) {
      Fail(std::string(list) + "[" + std::to_string(i) + "] has shape " + ShapeStr(b.shape) +
           " but needs " + ShapeStr(*want));
    }
    return b.ptr;
  };
  for (size_t i = 0; i < n; ++i) {
    var_ptrs[i] = take(vars[i], "vars", i, true, nullptr);
    const std::vector<int64_t> shape = bufs.back().shape;
    grad_ptrs[i] = take(grads[i], "grads", i, false, &shape);
    v_ptrs[i] = take(v[i], "v", i, true, &shape);
    if (shape.size() >= 2) {
      std::vector<int64_t> rs(shape.begin(), shape.end() - 1);
      std::vector<int64_t> cs = rs;
      cs.back() = shape.back();
      r_ptrs[i] = take(r[i], "r", i, true, &rs);
      c_ptrs[i] = take(c[i], "c", i, true, &cs);
    }
    shapes[i] = shape;
    shape_ptrs[i] = shapes[i].data();
    ranks[i] = static_cast<int>(shape.size());
  }
  const double scalars[6] = {lr, beta_2_decay, epsilon_1, epsilon_2, clip_threshold,
                             weight_decay};
  char err[1024] = {0};
  int code;
  {
    py::gil_scoped_release release;
    code = fusedopt_adafactor_apply(dtype < 0 ? 2 : dtype, FUSEDOPT_DEVICE_CPU, threads, scalars, step,
                                    grappler_form ? 1 : 0, static_cast<int>(n), var_ptrs.data(),
                                    r_ptrs.data(), c_ptrs.data(), v_ptrs.data(), grad_ptrs.data(),
                                    shape_ptrs.data(), ranks.data(), err, sizeof(err));
  }
  Check(code, err);
}

// apply's and sparse_apply's keywords that are a rule's options.
const char* const kRuleOptions[] = {"nesterov", "epsilon_outside_sqrt", "schedule_decay",
                                    "tf_training_op_form"};

py::dict Rules() {
  py::dict out;
  for (int r = 0; r < fusedopt_rule_count(); ++r) {
    py::list scalars, slots;
    for (int k = 0; k < fusedopt_rule_num_scalars(r); ++k) scalars.append(fusedopt_rule_scalar_name(r, k));
    for (int k = 0; k < fusedopt_rule_num_slots(r); ++k) {
      slots.append(py::make_tuple(fusedopt_rule_slot_name(r, k), fusedopt_rule_slot_optional(r, k) != 0));
    }
    py::dict d;
    d["scalars"] = scalars;
    d["slots"] = slots;
    d["step"] = fusedopt_rule_has_step(r) != 0;
    // The options apply (and sparse_apply) take of this rule.
    py::list options, sparse_options;
    for (const char* option : kRuleOptions) {
      if (fusedopt_rule_takes_option(r, option, 0) == 1) options.append(option);
      if (fusedopt_rule_takes_option(r, option, 1) == 1) sparse_options.append(option);
    }
    d["options"] = options;
    d["sparse_options"] = sparse_options;
    // Whether apply and sparse_apply take state_dtype, absmax, rounding_seed
    // and stochastic_rounding for the rule (Note [low-precision state]).
    d["state"] = fusedopt_rule_takes_option(r, "state_format", 0) == 1;
    out[fusedopt_rule_name(r)] = d;
  }
  return out;
}

std::string CudaStatus() {
  char err[512] = {0};
  return fusedopt_native_cuda_status(err, sizeof(err)) == FUSEDOPT_OK ? "ok" : err;
}

// The XLA FFI handlers of this build as {target name: PyCapsule}, for
// jax.ffi.register_ffi_target(name, capsule, platform="cpu") (Note [one
// handler, two XLAs] in cc/xla/ffi_handler.h).
py::dict FfiTargets() {
#if defined(FUSEDOPT_XLA_FFI)
  py::dict d;
  d["fusedopt_apply"] =
      py::capsule(reinterpret_cast<void*>(fusedopt::xla_ffi::FusedApplyHandler()));
  d["fusedopt_adafactor"] =
      py::capsule(reinterpret_cast<void*>(fusedopt::xla_ffi::AdafactorHandler()));
  return d;
#else
  throw std::runtime_error(std::string("this fusedopt._native was built without the XLA FFI "
                                       "handlers: ") + FUSEDOPT_XLA_FFI_MISSING);
#endif
}

// {"built", "headers", "api_version" (what the handlers report, asked as XLA
// asks them), "missing" (why not built)}.
py::dict FfiInfo() {
  py::dict d;
#if defined(FUSEDOPT_XLA_FFI)
  d["built"] = true;
  d["headers"] = std::string(FUSEDOPT_XLA_FFI_HEADERS);
  int major = -1, minor = -1;
  if (fusedopt::xla_ffi::HandlerApiVersion(fusedopt::xla_ffi::FusedApplyHandler(), &major,
                                           &minor)) {
    d["api_version"] = py::make_tuple(major, minor);
  } else {
    d["api_version"] = py::none();
  }
  d["missing"] = "";
#else
  d["built"] = false;
  d["headers"] = "";
  d["api_version"] = py::none();
  d["missing"] = std::string(FUSEDOPT_XLA_FFI_MISSING);
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() =
      "fusedopt's kernels without TensorFlow: every fused rule over many arrays in one call, on "
      "NumPy arrays (CPU) or CUDA device arrays (CuPy, PyTorch: DLPack or "
      "__cuda_array_interface__). Same coefficients and bits as the TensorFlow ops on the CPU.";
  const double inf = INFINITY;
  auto apply_doc = R"doc(
Applies one optimizer step to many variables in place and returns `skipped`.

rule: a name from rules(); vars, grads: lists of arrays (one dtype, one device,
C-contiguous, variables writable); slots: {slot name: list of arrays, one per
variable, shaped like it} (optional slots may be absent); hparams: {name: float}
in the rule's scalars (weight_decay defaults to 0); step: the 1-based step of
bias-corrected rules. The options mean what they mean in fusedopt.ops. stream:
a cudaStream_t as int (0: the legacy default stream); threads: CPU worker
threads (0: one per core). Raises ValueError for bad input and RuntimeError for
CUDA failures; nothing is written when it raises.

Low-precision state (the rules whose rules() entry has 'state': True; float32
or bfloat16 variables; dense calls on the CPU and CUDA, whose kernels have not
run on a GPU yet, sparse calls on the CPU only): state_dtype 'bfloat16' takes bfloat16 slots
(stored with stochastic rounding), 'int8' uint8 slots (codes) plus absmax, a
dict {slot name: list of float32 arrays of shape
(fusedopt.state.num_blocks(var.shape),), one per variable}, for every slot
list given. stochastic_rounding stores bfloat16 variables stochastically;
rounding_seed (any int, as its 64 bits) seeds the rounding: fold the step into
it. The TensorFlow ops' (fusedopt.ops' state_dtype, absmax, rounding_seed,
stochastic_rounding) bits.)doc";
  m.def(
      "apply",
      [](const std::string& rule, const py::list& vars, const py::list& grads,
         const py::object& slots, const py::dict& hparams, int64_t step, bool nesterov,
         bool epsilon_outside_sqrt, double schedule_decay, bool grappler_form,
         bool constant_folding, double grad_scale, double clip_value, double clip_norm,
         double global_clip_norm, bool skip_nonfinite, uintptr_t stream, int threads,
         bool tf_training_op_form, const std::string& state_dtype, const py::object& absmax,
         const py::object& rounding_seed, bool stochastic_rounding) {
        Options o{step, nesterov, epsilon_outside_sqrt, schedule_decay, grappler_form,
                  constant_folding, grad_scale, clip_value, clip_norm,
                  global_clip_norm, skip_nonfinite, stream, threads,
                  tf_training_op_form};
        o.state_dtype = state_dtype;
        o.absmax = absmax;
        o.rounding_seed = rounding_seed;
        o.stochastic_rounding = stochastic_rounding;
        return Apply(rule, vars, grads, slots, hparams, o);
      },
      py::arg("rule"), py::arg("vars"), py::arg("grads"), py::arg("slots") = py::none(),
      py::arg("hparams") = py::dict(), py::kw_only(), py::arg("step") = 0,
      py::arg("nesterov") = false, py::arg("epsilon_outside_sqrt") = false,
      py::arg("schedule_decay") = 1.0, py::arg("grappler_form") = false,
      py::arg("constant_folding") = false, py::arg("grad_scale") = 1.0,
      py::arg("clip_value") = inf, py::arg("clip_norm") = inf, py::arg("global_clip_norm") = inf,
      py::arg("skip_nonfinite") = false, py::arg("stream") = 0, py::arg("threads") = 0,
      py::arg("tf_training_op_form") = false, py::arg("state_dtype") = "float32",
      py::arg("absmax") = py::none(), py::arg("rounding_seed") = 0,
      py::arg("stochastic_rounding") = false, apply_doc);
  m.def(
      "sparse_apply",
      [](const std::string& rule, const py::list& vars, const py::list& values,
         const py::list& indices, const py::object& slots, const py::dict& hparams,
         const std::string& mode, int64_t step, bool nesterov, bool epsilon_outside_sqrt,
         double schedule_decay, double grad_scale, double clip_value, double clip_norm,
         double global_clip_norm, bool skip_nonfinite, int threads, bool tf_training_op_form,
         const std::string& state_dtype, const py::object& absmax,
         const py::object& rounding_seed, bool stochastic_rounding) {
        Options o{step, nesterov, epsilon_outside_sqrt, schedule_decay, false,
                  false, grad_scale, clip_value, clip_norm, global_clip_norm,
                  skip_nonfinite, 0, threads, tf_training_op_form};
        o.state_dtype = state_dtype;
        o.absmax = absmax;
        o.rounding_seed = rounding_seed;
        o.stochastic_rounding = stochastic_rounding;
        return SparseApply(rule, vars, values, indices, slots, hparams, mode, o);
      },
      py::arg("rule"), py::arg("vars"), py::arg("grad_values"), py::arg("grad_indices"),
      py::arg("slots") = py::none(), py::arg("hparams") = py::dict(), py::kw_only(),
      py::arg("mode") = "exact", py::arg("step") = 0, py::arg("nesterov") = false,
      py::arg("epsilon_outside_sqrt") = false, py::arg("schedule_decay") = 1.0,
      py::arg("grad_scale") = 1.0, py::arg("clip_value") = inf, py::arg("clip_norm") = inf,
      py::arg("global_clip_norm") = inf, py::arg("skip_nonfinite") = false,
      py::arg("threads") = 0, py::arg("tf_training_op_form") = false,
      py::arg("state_dtype") = "float32", py::arg("absmax") = py::none(),
      py::arg("rounding_seed") = 0, py::arg("stochastic_rounding") = false,
      R"doc(
A sparse (IndexedSlices) step, CPU only for now: grad_values[i] holds one row
per entry of grad_indices[i] (NumPy int32/int64, any order, duplicates summed)
for vars[i] (rank >= 1). mode 'exact' updates every row (rows without a
gradient see a zero gradient, as Keras' densified update), 'lazy' only the rows
with one. A bad index raises ValueError and nothing is written. Low-precision
state as in apply; with state_dtype='int8' only the updated rows' codes and
absmax change (lazy), and variables need rank >= 2.)doc");
  m.def("adafactor_apply", &AdafactorApply, py::arg("vars"), py::arg("grads"), py::arg("r"),
        py::arg("c"), py::arg("v"), py::kw_only(), py::arg("lr"), py::arg("step"),
        py::arg("beta_2_decay") = -0.8, py::arg("epsilon_1") = 1e-30,
        py::arg("epsilon_2") = 1e-3, py::arg("clip_threshold") = 1.0,
        py::arg("weight_decay") = 0.0, py::arg("grappler_form") = false,
        py::arg("threads") = 0,
        R"doc(
Adafactor (keras.optimizers.Adafactor) in place over many NumPy arrays, CPU
only: three passes per array, sums in double in a fixed order (the TF op's
bits). For a variable of rank >= 2 and shape [..., R, C], r[i] has shape
[..., R] and c[i] [..., C]; for lower ranks r[i] and c[i] are ignored (None is
fine) and v[i] holds the second moment; v[i] and grads[i] have the variable's
shape. step counts from 1. Raises ValueError for bad input (nothing written).)doc");
  m.def("grad_stats", &GradStats, py::arg("grads"), py::kw_only(), py::arg("stream") = 0,
        py::arg("threads") = 0,
        "Per-array sums of squares (double, deterministic) and whether any element is inf/NaN.");
  m.def("rules", &Rules,
        "The rules: {name: {'scalars': [...], 'slots': [(name, optional)], 'step': bool, "
        "'options': [...], 'sparse_options': [...], 'state': bool}}; options: the keywords "
        "among nesterov, epsilon_outside_sqrt, schedule_decay and tf_training_op_form that "
        "apply takes for the rule (sparse_options: sparse_apply; another rule's option is "
        "refused); state: whether it takes low-precision state (state_dtype, absmax, "
        "rounding_seed, stochastic_rounding).");
  m.def("cuda_built", [] { return fusedopt_native_cuda_built() != 0; },
        "Whether this build has the CUDA kernels.");
  m.def("cuda_available", [] { return CudaStatus() == "ok"; },
        "Whether CUDA is built in and a device and a recent enough driver are usable.");
  m.def("cuda_info", [] {
    py::dict d;
    d["built"] = fusedopt_native_cuda_built() != 0;
    d["runtime_version"] = fusedopt_native_cuda_runtime_version();
    d["driver_version"] = fusedopt_native_cuda_driver_version();
    d["archs"] = std::string(fusedopt_native_cuda_archs());
    d["device_count"] = fusedopt_native_cuda_device_count();
    d["status"] = CudaStatus();
    return d;
  }, "The CUDA runtime fusedopt links, the driver's CUDA version, the architectures built, and "
     "'ok' or why CUDA is unusable.");
  m.def("cpu_isa", [] { return std::string(fusedopt_native_cpu_isa()); },
        "The instruction set of the CPU loops in use (FUSEDOPT_CPU_ISA forces one).");
  m.def("cpu_isas", [] {
    py::list out;
    std::string all = fusedopt_native_cpu_isas();
    for (size_t pos = 0; pos < all.size();) {
      size_t end = all.find(',', pos);
      if (end == std::string::npos) end = all.size();
      out.append(all.substr(pos, end - pos));
      pos = end + 1;
    }
    return out;
  }, "The CPU loop ISAs compiled in and supported by this CPU, baseline first.");
  m.def("build_info", [] {
    py::dict d;
    d["version"] = std::string(fusedopt_native_version());
    d["abi_version"] = fusedopt_native_abi_version();
    d["cuda"] = fusedopt_native_cuda_built() != 0;
    d["cuda_archs"] = std::string(fusedopt_native_cuda_archs());
    d["cuda_runtime_version"] = fusedopt_native_cuda_runtime_version();
    d["cpu_isa"] = std::string(fusedopt_native_cpu_isa());
    d["cpu_isas"] = py::module_::import("fusedopt._native").attr("cpu_isas")();
    d["xla_ffi"] = FfiInfo();
    return d;
  }, "What this build holds: version, CUDA (and its architectures), the CPU ISA in use, and "
     "the XLA FFI handlers (xla_ffi: built, the headers and API version, or why not).");
  m.def("ffi_targets", &FfiTargets, R"doc(
The XLA FFI handlers for the "Host" platform as {target name: PyCapsule}:
"fusedopt_apply" (every dense rule) and "fusedopt_adafactor", for
jax.ffi.register_ffi_target(name, capsule, platform="cpu") (fusedopt.jax does
this). Raises RuntimeError when this build has no handlers (build_info()
['xla_ffi']['missing'] says why).)doc");
  m.attr("__version__") = fusedopt_native_version();
}
