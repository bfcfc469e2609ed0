// HF_CHECK(cond, parts...): TORCH_CHECK with a message this header formats, into one std::string, without any
// std::ostream. Where the compiler driver links a private static libstdc++ into an extension (seen on a GPU
// image), that copy's iostreams have no usable locale: a number written into TORCH_CHECK's ostringstream
// crashed the process (or came out missing) instead of raising the error. Integers go through std::to_string
// (no locale), floating-point numbers through snprintf, dtypes, devices and shapes through their string forms;
// TORCH_CHECK then receives a single std::string, which it passes on without a stream.
#pragma once

#include <ATen/ATen.h>

#include <cstdio>
#include <string>
#include <type_traits>

namespace hyperfused {
namespace msg_detail {

inline void put(std::string& s, const char* v) { s += v; }
inline void put(std::string& s, const std::string& v) { s += v; }
inline void put(std::string& s, char v) { s += v; }
inline void put(std::string& s, bool v) { s += v ? "true" : "false"; }
template <typename T, typename std::enable_if<std::is_integral<T>::value && !std::is_same<T, bool>::value &&
                                                  !std::is_same<T, char>::value,
                                              int>::type = 0>
inline void put(std::string& s, T v) {
  s += std::to_string(v);
}
inline void put(std::string& s, double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  s += buf;
}
inline void put(std::string& s, float v) { put(s, static_cast<double>(v)); }
inline void put(std::string& s, at::ScalarType v) { s += c10::toString(v); }
inline void put(std::string& s, const at::Device& v) { s += v.str(); }
inline void put(std::string& s, at::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}

}  // namespace msg_detail

// The parts of a message, concatenated.
template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (msg_detail::put(s, args), ...);
  return s;
}

}  // namespace hyperfused

#define HF_CHECK(cond, ...) TORCH_CHECK((cond), ::hyperfused::msg(__VA_ARGS__))
