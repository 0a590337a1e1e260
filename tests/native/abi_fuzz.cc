// A randomized test of the C ABI (cc/native/fusedopt_native.h): calls with
// valid fields and with fields made bad one or two at a time, as a careless
// caller or a fuzzer would: codes out of range, NULL and misaligned pointers,
// overlapping buffers, sizes and products that overflow int64 or the address
// space, bad sparse indices, wrong slot lists and scalar counts, options of
// other rules, non-finite hyperparameters. Every buffer sits between guard
// bytes. After every call:
//   - the process is alive (no abort, no crash: no exception crossed the ABI);
//   - the guard bytes are intact (nothing was written outside a buffer);
//   - the return code is one of the FUSEDOPT_* codes and the message is a
//     NUL-terminated string, non-empty on an error;
//   - on an error, no byte of any buffer changed (all or nothing);
//   - a field the contract makes invalid (a wrapped product, a NULL buffer
//     with elements, ...) gives FUSEDOPT_INVALID_ARGUMENT.
// Built beside the native tests and, in CI, under AddressSanitizer and
// UndefinedBehaviorSanitizer too (scripts/test.sh), where any out-of-bounds
// access or signed overflow also fails the run.
//
// Usage: fusedopt_abi_fuzz [seconds] [seed]   (defaults: 10 s, a random seed)
// Prints the seed, the calls made per kind, and "N passed, M failed".
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cc/native/fusedopt_native.h"

namespace {

constexpr size_t kGuard = 64;
constexpr unsigned char kGuardByte = 0xA5;
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();

int ElemBytes(int dtype) { return dtype == 3 ? 8 : (dtype == 2 ? 4 : 2); }

// One buffer with guard bytes before and after its `bytes` bytes.
struct Buffer {
  std::vector<unsigned char> mem;
  size_t bytes = 0;
  void Make(size_t n, std::mt19937_64& rng, int dtype) {
    bytes = n;
    mem.assign(n + 2 * kGuard, kGuardByte);
    // Finite values in every dtype: small integers scaled, stored by dtype.
    std::uniform_real_distribution<double> u(-2.0, 2.0);
    const int eb = ElemBytes(dtype);
    for (size_t e = 0; e + eb <= n; e += eb) {
      const double x = u(rng);
      unsigned char* p = data() + e;
      if (dtype == 3) {
        std::memcpy(p, &x, 8);
      } else {
        const float f = static_cast<float>(x);
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        if (dtype == 2) {
          std::memcpy(p, &f, 4);
        } else if (dtype == 1) {
          const uint16_t h = static_cast<uint16_t>(bits >> 16);  // bfloat16
          std::memcpy(p, &h, 2);
        } else {
          const uint16_t h = 0x3C00 | static_cast<uint16_t>(rng() & 0x3FF);  // float16 in [1, 2)
          std::memcpy(p, &h, 2);
        }
      }
    }
  }
  unsigned char* data() { return mem.data() + kGuard; }
  bool GuardsIntact() const {
    for (size_t k = 0; k < kGuard; ++k) {
      if (mem[k] != kGuardByte || mem[kGuard + bytes + k] != kGuardByte) return false;
    }
    return true;
  }
};

struct Stats {
  int64_t calls = 0, ok = 0, errors = 0;
  int passed = 0, failed = 0;
};

Stats g_stats;
uint64_t g_seed = 0;
int64_t g_state_ok = 0;  // calls with low-precision state that succeeded

void Fail(const std::string& kind, const std::string& what, int64_t call) {
  ++g_stats.failed;
  std::printf("FAILED [%s, call %lld, seed %llu]: %s\n", kind.c_str(),
              static_cast<long long>(call), static_cast<unsigned long long>(g_seed), what.c_str());
}

// Checks one call's outcome against the snapshot of every buffer.
void Judge(const std::string& kind, const std::string& mutation, bool must_fail, int rc,
           const char* err, size_t err_len, std::vector<Buffer*> buffers,
           const std::vector<std::vector<unsigned char>>& before) {
  ++g_stats.calls;
  const std::string label = kind + " / " + mutation;
  bool good = true;
  for (Buffer* b : buffers) {
    if (!b->GuardsIntact()) {
      Fail(label, "a guard byte changed: a write outside a buffer", g_stats.calls);
      good = false;
    }
  }
  if (rc < FUSEDOPT_OK || rc > FUSEDOPT_INTERNAL_ERROR) {
    Fail(label, "return code " + std::to_string(rc) + " is no FUSEDOPT_* code", g_stats.calls);
    good = false;
  }
  if (std::memchr(err, '\0', err_len) == nullptr) {
    Fail(label, "the message is not NUL-terminated", g_stats.calls);
    good = false;
  }
  if (rc == FUSEDOPT_INTERNAL_ERROR) {
    Fail(label, std::string("internal error: ") + err, g_stats.calls);
    good = false;
  }
  if (rc != FUSEDOPT_OK) {
    ++g_stats.errors;
    if (err[0] == '\0') {
      Fail(label, "an error without a message", g_stats.calls);
      good = false;
    }
    for (size_t k = 0; k < buffers.size(); ++k) {
      if (buffers[k]->mem != before[k]) {
        Fail(label, "a buffer changed although the call failed (" + std::string(err) + ")",
             g_stats.calls);
        good = false;
        break;
      }
    }
  } else {
    ++g_stats.ok;
  }
  if (must_fail && rc != FUSEDOPT_INVALID_ARGUMENT) {
    Fail(label, "must be FUSEDOPT_INVALID_ARGUMENT, got " + std::to_string(rc), g_stats.calls);
    good = false;
  }
  if (good) ++g_stats.passed;
}

// Hyperparameters every rule accepts (by name).
double GoodScalar(const char* name) {
  const std::string s = name;
  if (s == "lr") return 0.01;
  if (s == "beta_1") return 0.9;
  if (s == "beta_2") return 0.999;
  if (s == "epsilon") return 1e-7;
  if (s == "rho") return 0.9;
  if (s == "momentum") return 0.5;
  if (s == "learning_rate_power") return -0.5;
  if (s == "u_product") return 0.9;
  if (s == "scale") return 1.0;
  if (s == "rms_rate") return 0.2;
  return 0.0;  // weight_decay, l1, l2, l2_shrinkage, beta, warmup_steps
}

// A dense or sparse call of a random rule over 1-3 tensors, then mutated.
void ElementwiseCall(std::mt19937_64& rng, bool sparse) {
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
  const int rule = pick(fusedopt_rule_count());
  const int dtype = pick(4);
  const int eb = ElemBytes(dtype);
  const int n = 1 + pick(3);
  const int nslots = fusedopt_rule_num_slots(rule);
  const bool is_lamb = std::string(fusedopt_rule_name(rule)) == "lamb";
  // Low-precision state (ABI version 2): now and then, for a rule with state
  // and float32 or bfloat16 variables, bfloat16 or int8 slots (int8: a
  // float32 absmax per block, rows from row_sizes or the sparse rows).
  const bool state_rule = fusedopt_rule_takes_option(rule, "state_format", sparse ? 1 : 0) == 1;
  int state = FUSEDOPT_STATE_SAME;
  if (state_rule && (dtype == 1 || dtype == 2) && pick(3) == 0) state = 1 + pick(2);
  const bool int8 = state == FUSEDOPT_STATE_INT8;
  const int slot_eb = state == FUSEDOPT_STATE_SAME ? eb : (int8 ? 1 : 2);
  const bool give_rows = pick(2) == 0;

  std::vector<int64_t> rows(n), row_sizes(n), sizes(n), counts(n);
  std::vector<std::vector<int64_t>> indices(n);
  std::vector<Buffer> vars(n), grads(n), slots(n * 3), absmax(n * 3);
  std::vector<int64_t> state_rows(n), blocks(n);
  for (int i = 0; i < n; ++i) {
    rows[i] = pick(6);
    row_sizes[i] = pick(sparse ? 40 : 600);
    sizes[i] = sparse ? rows[i] * row_sizes[i] : pick(300);
    counts[i] = sparse && rows[i] > 0 ? pick(8) : 0;
    for (int64_t c = 0; c < counts[i]; ++c) indices[i].push_back(pick(static_cast<int>(rows[i])));
    vars[i].Make(sizes[i] * eb, rng, dtype);
    grads[i].Make((sparse ? counts[i] * row_sizes[i] : sizes[i]) * eb, rng, dtype);
    for (int k = 0; k < nslots; ++k) {
      slots[3 * i + k].Make(sizes[i] * slot_eb, rng, state == FUSEDOPT_STATE_BFLOAT16 ? 1 : dtype);
    }
    // int8 blocks: a dense tensor's rows of row_sizes[i] (a divisor of its
    // size) or one row; a sparse tensor's sparse rows.
    int64_t block_rows = 1, row = sizes[i];
    if (sparse) {
      state_rows[i] = row_sizes[i];
      if (rows[i] > 0) block_rows = rows[i], row = row_sizes[i];
    } else {
      int64_t r = sizes[i] > 0 ? 1 + pick(static_cast<int>(sizes[i])) : pick(3);
      while (sizes[i] > 0 && sizes[i] % r != 0) --r;
      state_rows[i] = r;
      if (give_rows && sizes[i] > 0) block_rows = sizes[i] / r, row = r;
    }
    blocks[i] = block_rows * ((row + 255) / 256);
    if (int8) {
      for (int k = 0; k < nslots; ++k) absmax[3 * i + k].Make(blocks[i] * 4, rng, 2);
    }
  }
  // Moments and accumulators must not be negative for every rule to accept
  // them at run time: keep slot values as made (float16 in [1, 2) is
  // positive; others may be negative, which only changes numbers).
  std::vector<void*> var_ptrs(n), slot_ptrs(3 * n, nullptr);
  std::vector<float*> absmax_ptrs(3 * n, nullptr);
  std::vector<const void*> grad_ptrs(n);
  std::vector<const int64_t*> index_ptrs(n);
  for (int i = 0; i < n; ++i) {
    var_ptrs[i] = vars[i].data();
    grad_ptrs[i] = grads[i].data();
    index_ptrs[i] = indices[i].empty() ? nullptr : indices[i].data();
    for (int k = 0; k < nslots; ++k) {
      slot_ptrs[3 * i + k] = slots[3 * i + k].data();
      if (int8) absmax_ptrs[3 * i + k] = reinterpret_cast<float*>(absmax[3 * i + k].data());
    }
  }
  std::vector<double> scalars;
  for (int k = 0; k < fusedopt_rule_num_scalars(rule); ++k) {
    scalars.push_back(GoodScalar(fusedopt_rule_scalar_name(rule, k)));
  }
  fusedopt_call call;
  fusedopt_call_init(&call);
  call.rule = rule;
  call.dtype = dtype;
  call.num_threads = 1 + pick(2);
  call.scalars = scalars.data();
  call.num_scalars = static_cast<int>(scalars.size());
  call.step = fusedopt_rule_has_step(rule) ? 1 + pick(5) : 0;
  call.state_format = state;
  call.stochastic_rounding = dtype == 1 && state_rule ? pick(2) : 0;
  call.rounding_seed = state_rule ? rng() : 0;
  fusedopt_tensors t;
  std::memset(&t, 0, sizeof(t));
  t.n = n;
  for (int k = 0; k < nslots; ++k) t.slot_given[k] = 1;
  t.vars = var_ptrs.data();
  t.slots = slot_ptrs.data();
  t.grads = grad_ptrs.data();
  t.sizes = sizes.data();
  if (int8) t.absmax = absmax_ptrs.data();
  if (give_rows) t.row_sizes = state_rows.data();
  fusedopt_sparse sp{index_ptrs.data(), counts.data(), rows.data(), row_sizes.data(), pick(2)};

  // The mutation: must_fail says whether the contract makes it invalid.
  std::string mutation = "none";
  bool must_fail = false;
  const int i = pick(n);
  const int64_t huge[] = {int64_t{1} << 62, (int64_t{1} << 62) + 1, kI64Max, -1, kI64Min};
  switch (pick(sparse ? 24 : 18)) {
    case 0: case 1: case 2: break;  // a valid call
    case 3: mutation = "rule out of range"; call.rule = pick(2) ? -1 : 1000; must_fail = true; break;
    case 4: mutation = "dtype out of range"; call.dtype = pick(2) ? -1 : 4; must_fail = true; break;
    case 5: mutation = "device code"; call.device = 7; must_fail = true; break;
    case 6:
      mutation = "num_scalars off by one";
      call.num_scalars += pick(2) ? 1 : -1;
      must_fail = true;
      break;
    case 7:
      if (scalars.empty()) break;
      mutation = "scalars NULL";
      call.scalars = nullptr;
      must_fail = true;
      break;
    case 8:
      if (scalars.empty()) break;
      mutation = "a non-finite hyperparameter";
      scalars[pick(static_cast<int>(scalars.size()))] = pick(2) ? NAN : -INFINITY;
      must_fail = true;
      break;
    case 9:
      mutation = "an option of another rule";
      if (std::string(fusedopt_rule_name(rule)) != "nadam") {
        call.schedule_decay = pick(2) ? NAN : 0.004;
        must_fail = true;
      }
      break;
    case 10:
      mutation = "n negative";
      t.n = -1 - pick(5);
      must_fail = true;
      break;
    case 11: {
      mutation = "a size that overflows the address space";
      sizes[i] = huge[pick(5)];
      must_fail = true;
      break;
    }
    case 12:
      mutation = "vars/grads/sizes NULL";
      if (pick(3) == 0) t.vars = nullptr; else if (pick(2)) t.grads = nullptr; else t.sizes = nullptr;
      must_fail = true;
      break;
    case 13:
      if (sizes[i] == 0) break;
      mutation = "a NULL variable with elements";
      var_ptrs[i] = nullptr;
      must_fail = true;
      break;
    case 14:
      if (sizes[i] == 0) break;
      mutation = "a misaligned variable";
      var_ptrs[i] = vars[i].data() + 1;
      must_fail = true;
      break;
    case 15:
      if (sizes[i] == 0 || nslots == 0) break;
      mutation = "a slot that is its variable";
      slot_ptrs[3 * i] = var_ptrs[i];
      must_fail = true;
      break;
    case 16:
      mutation = "slot lists given wrongly";
      if (nslots < 3) {
        t.slot_given[nslots] = 1;  // a list the rule does not have
      } else {
        t.slot_given[0] = 0;  // Adam's m, RMSprop's velocity: required
      }
      must_fail = true;
      break;
    case 17:
      mutation = "call or tensors NULL";
      // Both arguments NULL'd through the call below.
      must_fail = true;
      break;
    // Sparse only.
    case 18: {
      mutation = "rows x row_size wraps to the declared size";
      const int64_t a[][2] = {{int64_t{1} << 44, int64_t{1} << 20},
                              {int64_t{1} << 32, int64_t{1} << 32},
                              {(int64_t{1} << 62) + 1, 4}};
      const auto& p = a[pick(3)];
      rows[i] = p[0];
      row_sizes[i] = p[1];
      sizes[i] = static_cast<int64_t>(static_cast<uint64_t>(p[0]) * static_cast<uint64_t>(p[1]));
      must_fail = true;
      break;
    }
    case 19:
      if (row_sizes[i] < 2) break;
      mutation = "counts x row_size overflows";
      counts[i] = kI64Max / 2 + 1;
      must_fail = true;
      break;
    case 20:
      if (counts[i] == 0) break;
      mutation = "an index out of range";
      indices[i][pick(static_cast<int>(counts[i]))] = pick(2) ? -1 : rows[i];
      must_fail = true;
      break;
    case 21:
      mutation = "negative rows, row_size or count";
      if (pick(3) == 0) rows[i] = -1; else if (pick(2)) row_sizes[i] = -3; else counts[i] = -2;
      must_fail = true;
      break;
    case 22:
      mutation = "sparse arrays NULL";
      if (pick(2)) sp.rows = nullptr; else sp.row_sizes = nullptr;
      must_fail = true;
      break;
    case 23:
      if (counts[i] == 0) break;
      mutation = "indices NULL with a count";
      index_ptrs[i] = nullptr;
      must_fail = true;
      break;
  }
  if (sparse && is_lamb && sp.exact == 0) must_fail = true;  // LAMB has no lazy mode

  // A second mutation, of the state fields, now and then.
  if (pick(4) == 0) {
    int with_blocks = -1;  // a tensor and slot list whose absmax holds blocks
    for (int j = 0; j < n && int8; ++j) {
      if (blocks[j] > 0 && nslots > 0 && sizes[j] > 0) with_blocks = j;
    }
    const bool float_state_dtype = dtype == 1 || dtype == 2;
    switch (pick(8)) {
      case 0:
        mutation += " + state_format out of range";
        call.state_format = pick(2) ? -1 : 3;
        must_fail = true;
        break;
      case 1:
        if (state_rule) break;
        mutation += " + state for a rule without it";
        call.state_format = 1 + pick(2);
        must_fail = true;
        break;
      case 2:
        if (state_rule) break;
        mutation += " + a rounding seed for a rule without state";
        call.rounding_seed = 1 + rng() % 1000;
        must_fail = true;
        break;
      case 3:
        if (!state_rule || float_state_dtype) break;
        mutation += " + state for float16/float64 variables";
        call.state_format = 1 + pick(2);
        must_fail = true;
        break;
      case 4:
        if (with_blocks < 0) break;
        mutation += " + absmax NULL";
        if (pick(2)) t.absmax = nullptr; else absmax_ptrs[3 * with_blocks] = nullptr;
        must_fail = true;
        break;
      case 5:
        if (with_blocks < 0) break;
        mutation += " + a misaligned absmax";
        absmax_ptrs[3 * with_blocks] =
            reinterpret_cast<float*>(absmax[3 * with_blocks].data() + 1 + pick(3));
        must_fail = true;
        break;
      case 6:
        if (with_blocks < 0) break;
        mutation += " + an absmax that overlaps a slot";
        absmax_ptrs[3 * with_blocks] = reinterpret_cast<float*>(slots[3 * with_blocks].data());
        must_fail = true;
        break;
      case 7:
        if (state != FUSEDOPT_STATE_BFLOAT16) {
          if (!int8 || sparse || sizes[i] < 2 || sizes[i] > 4096) break;  // (not a huge mutated size)
          mutation += " + row_sizes that do not divide the size";
          state_rows[i] = sizes[i] + 1 + pick(3);
          t.row_sizes = state_rows.data();
          must_fail = true;
          break;
        }
        mutation += " + absmax with bfloat16 state";
        t.absmax = absmax_ptrs.data();
        must_fail = true;
        break;
    }
  }

  std::vector<Buffer*> all;
  for (auto& b : vars) all.push_back(&b);
  for (auto& b : grads) all.push_back(&b);
  for (auto& b : slots) {
    if (!b.mem.empty()) all.push_back(&b);
  }
  for (auto& b : absmax) {
    if (!b.mem.empty()) all.push_back(&b);
  }
  std::vector<std::vector<unsigned char>> before;
  for (Buffer* b : all) before.push_back(b->mem);
  char err[256];
  std::memset(err, 'x', sizeof(err));
  int skipped = -1;
  const bool null_args = mutation == "call or tensors NULL";
  const fusedopt_call* c = null_args && pick(2) ? nullptr : &call;
  const fusedopt_tensors* tt = null_args && c != nullptr ? nullptr : &t;
  const int rc = sparse ? fusedopt_sparse_apply(c, tt, &sp, &skipped, err, sizeof(err))
                        : fusedopt_apply(c, tt, &skipped, err, sizeof(err));
  if (rc == FUSEDOPT_OK && call.state_format != FUSEDOPT_STATE_SAME) ++g_state_ok;
  Judge(sparse ? "sparse_apply" : "apply", mutation, must_fail, rc, err, sizeof(err), all, before);
}

// fusedopt_grad_stats with mutated sizes and pointers.
void GradStatsCall(std::mt19937_64& rng) {
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
  const int dtype = pick(4), eb = ElemBytes(dtype), n = 1 + pick(3);
  std::vector<Buffer> grads(n);
  std::vector<const void*> ptrs(n);
  std::vector<int64_t> sizes(n);
  for (int i = 0; i < n; ++i) {
    sizes[i] = pick(200);
    grads[i].Make(sizes[i] * eb, rng, dtype);
    ptrs[i] = grads[i].data();
  }
  std::vector<double> sum_sq(n, -1.0);
  int nonfinite = -1;
  std::string mutation = "none";
  bool must_fail = false;
  const int i = pick(n);
  double* sums = sum_sq.data();
  int* nf = &nonfinite;
  switch (pick(6)) {
    case 0: case 1: break;
    case 2: mutation = "a size that overflows"; sizes[i] = pick(2) ? kI64Max : (int64_t{1} << 62); must_fail = true; break;
    case 3: mutation = "a negative size"; sizes[i] = -1; must_fail = true; break;
    case 4: mutation = "sum_sq or nonfinite NULL"; if (pick(2)) sums = nullptr; else nf = nullptr; must_fail = true; break;
    case 5: if (sizes[i] == 0) break; mutation = "a NULL gradient"; ptrs[i] = nullptr; must_fail = true; break;
  }
  std::vector<Buffer*> all;
  for (auto& b : grads) all.push_back(&b);
  std::vector<std::vector<unsigned char>> before;
  for (Buffer* b : all) before.push_back(b->mem);
  char err[256];
  const int rc = fusedopt_grad_stats(dtype, FUSEDOPT_DEVICE_CPU, nullptr, 1, n, ptrs.data(),
                                     sizes.data(), sums, nf, err, sizeof(err));
  Judge("grad_stats", mutation, must_fail, rc, err, sizeof(err), all, before);
}

// fusedopt_adafactor_apply with mutated shapes and pointers.
void AdafactorCall(std::mt19937_64& rng) {
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
  const int dtype = pick(4), eb = ElemBytes(dtype), n = 1 + pick(2);
  std::vector<std::vector<int64_t>> shapes(n);
  std::vector<const int64_t*> shape_ptrs(n);
  std::vector<int> ranks(n);
  std::vector<Buffer> vars(n), grads(n), vs(n), rs(n), cs(n);
  std::vector<void*> vp(n), rp(n), cp(n), vvp(n);
  std::vector<const void*> gp(n);
  for (int i = 0; i < n; ++i) {
    ranks[i] = pick(4);
    int64_t size = 1, batch = 1;
    for (int d = 0; d < ranks[i]; ++d) {
      shapes[i].push_back(pick(7));
      size *= shapes[i].back();
      if (d + 2 < ranks[i]) batch *= shapes[i].back();
    }
    vars[i].Make(size * eb, rng, dtype);
    grads[i].Make(size * eb, rng, dtype);
    vs[i].Make(size * eb, rng, dtype);
    if (ranks[i] >= 2) {
      rs[i].Make(batch * shapes[i][ranks[i] - 2] * eb, rng, dtype);
      cs[i].Make(batch * shapes[i][ranks[i] - 1] * eb, rng, dtype);
      rp[i] = rs[i].data();
      cp[i] = cs[i].data();
    }
    vp[i] = vars[i].data();
    gp[i] = grads[i].data();
    vvp[i] = vs[i].data();
  }
  for (int i = 0; i < n; ++i) shape_ptrs[i] = shapes[i].data();
  double scalars[6] = {0.01, -0.8, 1e-30, 1e-3, 1.0, 0.0};
  std::string mutation = "none";
  bool must_fail = false;
  const int i = pick(n);
  int64_t step = 1 + pick(4);
  switch (pick(8)) {
    case 0: case 1: break;
    case 2:
      mutation = "a shape whose product overflows";
      ranks[i] = 2;
      shapes[i] = {int64_t{1} << 62, 4};
      shape_ptrs[i] = shapes[i].data();
      must_fail = true;
      break;
    case 3:
      mutation = "a negative dimension or rank";
      if (pick(2) && ranks[i] > 0) shapes[i][0] = -2; else ranks[i] = -1;
      must_fail = true;
      break;
    case 4: mutation = "epsilon_1 < 0"; scalars[2] = -1.0; must_fail = true; break;
    case 5: mutation = "step 0"; step = 0; must_fail = true; break;
    case 6: mutation = "vars NULL"; must_fail = true; break;
    case 7: mutation = "scalars NULL"; must_fail = true; break;
  }
  std::vector<Buffer*> all;
  for (auto* list : {&vars, &grads, &vs, &rs, &cs}) {
    for (auto& b : *list) {
      if (!b.mem.empty()) all.push_back(&b);
    }
  }
  std::vector<std::vector<unsigned char>> before;
  for (Buffer* b : all) before.push_back(b->mem);
  char err[256];
  const int rc = fusedopt_adafactor_apply(
      dtype, FUSEDOPT_DEVICE_CPU, 1, mutation == "scalars NULL" ? nullptr : scalars, step, 0, n,
      mutation == "vars NULL" ? nullptr : vp.data(), rp.data(), cp.data(), vvp.data(), gp.data(),
      shape_ptrs.data(), ranks.data(), err, sizeof(err));
  Judge("adafactor_apply", mutation, must_fail, rc, err, sizeof(err), all, before);
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 10.0;
  g_seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : std::random_device{}();
  std::printf("fusedopt_abi_fuzz: seed %llu, %.0f s\n", static_cast<unsigned long long>(g_seed),
              seconds);
  std::fflush(stdout);
  std::mt19937_64 rng(g_seed);
  // fusedopt_call_init(NULL) is a no-op, not a crash.
  fusedopt_call_init(nullptr);
  const auto start = std::chrono::steady_clock::now();
  int64_t dense = 0, sparse = 0, stats = 0, ada = 0;
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
         seconds) {
    for (int k = 0; k < 50; ++k) {
      switch (rng() % 4) {
        case 0: ElementwiseCall(rng, false); ++dense; break;
        case 1: ElementwiseCall(rng, true); ++sparse; break;
        case 2: GradStatsCall(rng); ++stats; break;
        default: AdafactorCall(rng); ++ada; break;
      }
    }
    if (g_stats.failed > 20) break;
  }
  std::printf("calls: %lld apply, %lld sparse_apply, %lld grad_stats, %lld adafactor_apply; "
              "%lld succeeded (%lld with low-precision state), %lld refused\n",
              static_cast<long long>(dense), static_cast<long long>(sparse),
              static_cast<long long>(stats), static_cast<long long>(ada),
              static_cast<long long>(g_stats.ok), static_cast<long long>(g_state_ok),
              static_cast<long long>(g_stats.errors));
  std::printf("%d passed, %d failed\n", g_stats.passed, g_stats.failed);
  return g_stats.failed == 0 && g_stats.ok > 0 && g_stats.errors > 0 ? 0 : 1;
}
