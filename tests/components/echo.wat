;; The smallest component of the world nex:function/function: handle answers the payload as it came.
;; A bump allocator for what the host passes in, emptied after each call (post-return).
(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      ;; align the bump pointer up to the alignment
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      ;; grow by the pages it lacks; none to be had: trap
      (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
        (then (if (i32.eq (memory.grow (i32.sub (i32.shr_u (i32.add (global.get $heap) (i32.const 65535))
                                                           (i32.const 16))
                                                (memory.size)))
                          (i32.const -1))
                (then unreachable))))
      (local.get $p))
    (func (export "handle") (param $sp i32) (param $sl i32) (param $pp i32) (param $pl i32) (result i32)
      (i32.store8 (i32.const 0) (i32.const 0))
      (i32.store (i32.const 4) (local.get $pp))
      (i32.store (i32.const 8) (local.get $pl))
      (i32.const 0))
    (func (export "cabi_post_handle") (param i32)
      (global.set $heap (i32.const 1024))))
  (core instance $i (instantiate $m))
  (func (export "handle") (param "subject" string) (param "payload" (list u8)) (result (result (list u8) (error string)))
    (canon lift (core func $i "handle") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))
                (post-return (core func $i "cabi_post_handle")))))
