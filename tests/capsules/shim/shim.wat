;; Test capsule for the `shim` namespace that QuickJS (extism js-pdk) guests use: syscalls are
;; reached by their index in the frozen table (astrid_core/syscalls.py) instead of by name.
;; Tool input is {"name":"<tool>",...}; the tool is chosen by the first letter of its name
;; (byte 9 of the input): p(robe), v(oid), l(og).
(module
  (import "extism:host/env" "input_load_u8" (func $input_u8 (param i64) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "load_u8" (func $load_u8 (param i64) (result i32)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "shim" "__get_function_arg_type" (func $arg_type (param i32 i32) (result i32)))
  (import "shim" "__get_function_return_type" (func $return_type (param i32) (result i32)))
  (import "shim" "__invokeHostFunc"
    (func $invoke (param i32 i64 i64 i64 i64 i64) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "warnfrom the shim")

  ;; Copy guest memory [ptr, ptr+len) into a new Extism block; returns its offset.
  (func $put (param $ptr i32) (param $len i32) (result i64)
    (local $block i64) (local $i i32)
    (local.set $block (call $alloc (i64.extend_i32_u (local.get $len))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (call $store_u8
          (i64.add (local.get $block) (i64.extend_i32_u (local.get $i)))
          (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $block))

  ;; Store an ASCII digit for a small answer at guest address `at`.
  (func $digit (param $at i32) (param $value i32)
    (i32.store8 (local.get $at) (i32.add (i32.const 48) (local.get $value))))

  (func (export "astrid_tool_call") (result i32)
    (local $tool i32) (local $clock i64) (local $clock_len i64) (local $out i64) (local $i i64)
    (local.set $tool (call $input_u8 (i64.const 9)))
    (if (i32.eq (local.get $tool) (i32.const 118)) ;; 'v'
      (then
        (drop (call $invoke (i32.const 7)
          (call $put (i32.const 4) (i32.const 4)) (call $put (i32.const 4) (i32.const 2))
          (i64.const 0) (i64.const 0) (i64.const 0)))
        (return (i32.const 0))))
    (if (i32.eq (local.get $tool) (i32.const 108)) ;; 'l'
      (then
        (drop (call $invoke (i32.const 23)
          (call $put (i32.const 0) (i32.const 4)) (call $put (i32.const 4) (i32.const 13))
          (i64.const 0) (i64.const 0) (i64.const 0)))
        (return (i32.const 0))))
    ;; probe: six answers as digits at 100..105, then the clock's digits
    (call $digit (i32.const 100) (call $arg_type (i32.const 23) (i32.const 1)))
    (call $digit (i32.const 101) (call $arg_type (i32.const 23) (i32.const 2)))
    (call $digit (i32.const 102) (call $return_type (i32.const 23)))
    (call $digit (i32.const 103) (call $return_type (i32.const 34)))
    (call $digit (i32.const 104) (call $arg_type (i32.const 99) (i32.const 0)))
    (call $digit (i32.const 105) (i32.wrap_i64 (call $invoke (i32.const 99)
      (i64.const 0) (i64.const 0) (i64.const 0) (i64.const 0) (i64.const 0))))
    (local.set $clock (call $invoke (i32.const 34)
      (i64.const 0) (i64.const 0) (i64.const 0) (i64.const 0) (i64.const 0)))
    (local.set $clock_len (call $length (local.get $clock)))
    (local.set $out (call $alloc (i64.add (i64.const 6) (local.get $clock_len))))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $i) (i64.const 6)))
        (call $store_u8 (i64.add (local.get $out) (local.get $i))
          (i32.load8_u (i32.add (i32.const 100) (i32.wrap_i64 (local.get $i)))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $next)))
    (local.set $i (i64.const 0))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $i) (local.get $clock_len)))
        (call $store_u8 (i64.add (local.get $out) (i64.add (i64.const 6) (local.get $i)))
          (call $load_u8 (i64.add (local.get $clock) (local.get $i))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $next)))
    (call $output_set (local.get $out) (i64.add (i64.const 6) (local.get $clock_len)))
    (i32.const 0))
)
