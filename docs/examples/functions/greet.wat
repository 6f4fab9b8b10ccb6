;; greet.wat: a component of the world nex:function/function, in the component text format.
;; handle answers "hello, " and the payload, or, for an empty payload, an error.
(component
  (core module $greet
    (memory (export "memory") 1)
    (data (i32.const 16) "hello, ")
    (data (i32.const 32) "say who to greet")
    ;; where the host copies the subject and the payload: a bump allocator from 1024,
    ;; emptied after every call (cabi_post_handle)
    (global $heap (mut i32) (i32.const 1024))
    (func $alloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (global.get $heap))
      (global.set $heap (i32.add (local.get $at) (local.get 3)))
      (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
        (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get 3) (i32.const 16)) (i32.const 1)))
                          (i32.const -1))
                (then unreachable))))
      (local.get $at))
    ;; handle(subject, payload) -> result<list<u8>, string>, written at 0: a tag, then a pointer and a length
    (func (export "handle") (param $subject i32) (param $subject_len i32) (param $payload i32) (param $len i32)
                            (result i32)
      (local $reply i32)
      (if (i32.eqz (local.get $len))
        (then
          (i32.store8 (i32.const 0) (i32.const 1))  ;; err
          (i32.store (i32.const 4) (i32.const 32))
          (i32.store (i32.const 8) (i32.const 16))
          (return (i32.const 0))))
      (local.set $reply (call $alloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.add (local.get $len) (i32.const 7))))
      (memory.copy (local.get $reply) (i32.const 16) (i32.const 7))
      (memory.copy (i32.add (local.get $reply) (i32.const 7)) (local.get $payload) (local.get $len))
      (i32.store8 (i32.const 0) (i32.const 0))  ;; ok
      (i32.store (i32.const 4) (local.get $reply))
      (i32.store (i32.const 8) (i32.add (local.get $len) (i32.const 7)))
      (i32.const 0))
    (func (export "cabi_post_handle") (param i32)
      (global.set $heap (i32.const 1024))))
  (core instance $instance (instantiate $greet))
  (func (export "handle") (param "subject" string) (param "payload" (list u8))
                          (result (result (list u8) (error string)))
    (canon lift (core func $instance "handle") (memory (core memory $instance "memory"))
                (realloc (core func $instance "cabi_realloc")) (post-return (core func $instance "cabi_post_handle")))))
