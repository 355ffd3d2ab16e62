/* Entry for QEMU virt: EL1 by default, EL2 with virtualization=on; MMU and caches off, all
 * interrupts masked, x0 = 0 (no DTB pointer for ELF images: the DTB is at the start of RAM).
 * Set up FP/SIMD access (the target has +neon and the compiler uses q registers), the vector
 * table for the current EL, the stack and .bss, then call `aarch64_main(current_el)`. */

    .section .text.boot, "ax"
    .global _start
_start:
    mrs x19, CurrentEL
    lsr x19, x19, #2
    and x19, x19, #3
    adr x1, vectors
    cmp x19, #2
    b.eq 2f
    cmp x19, #1
    b.eq 1f
    b park                       /* EL3 or EL0: not a configuration QEMU virt gives us */

1:  /* EL1: CPACR_EL1.FPEN = 0b11, no FP/SIMD traps. */
    mov x2, #(3 << 20)
    msr cpacr_el1, x2
    msr vbar_el1, x1
    b 3f

2:  /* EL2 (nVHE layout): CPTR_EL2 with TFP = 0; bits 13:12 and 9:0 are RES1. */
    mov x2, #0x33ff
    msr cptr_el2, x2
    msr vbar_el2, x1

3:  isb
    ldr x1, =__stack_top
    mov sp, x1
    ldr x1, =__bss_start
    ldr x2, =__bss_end
4:  cmp x1, x2
    b.hs 5f
    str xzr, [x1], #8
    b 4b
5:  mov x0, x19
    bl aarch64_main
park:
    wfe
    b park

/* Exception vectors: 16 entries of 0x80 bytes. Every entry records which one fired and enters
 * Rust, which logs the syndrome and exits with failure; nothing returns. */
    .section .text
    .balign 0x800
vectors:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 0x80
    mov x0, #\n
    b vector_common
    .endr

vector_common:
    ldr x1, =__stack_top          /* a fresh stack: the old one may be the problem */
    mov sp, x1
    bl aarch64_exception
    b park
