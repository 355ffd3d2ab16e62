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

/* Exception vectors: 16 entries of 0x80 bytes. An IRQ at the current EL (entry 5, SPx) goes
 * to the GIC handler and returns; every other entry records which one fired and enters Rust,
 * which logs the syndrome and exits with failure. */
    .section .text
    .balign 0x800
vectors:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 0x80
    .if \n == 5
    b irq_entry
    .else
    mov x0, #\n
    b vector_common
    .endif
    .endr

/* IRQ: save what the AAPCS64 lets a call clobber (x0-x18, x29, x30, v0-v7, v16-v31; the
 * handler is Rust and may use SIMD), call `aarch64_irq`, restore, return to the interrupted
 * code with ELR/SPSR as the exception left them (the handler runs with IRQs masked). */
irq_entry:
    sub sp, sp, #560
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x29, [sp, #144]
    str x30, [sp, #160]
    stp q0, q1, [sp, #176]
    stp q2, q3, [sp, #208]
    stp q4, q5, [sp, #240]
    stp q6, q7, [sp, #272]
    stp q16, q17, [sp, #304]
    stp q18, q19, [sp, #336]
    stp q20, q21, [sp, #368]
    stp q22, q23, [sp, #400]
    stp q24, q25, [sp, #432]
    stp q26, q27, [sp, #464]
    stp q28, q29, [sp, #496]
    stp q30, q31, [sp, #528]
    bl aarch64_irq
    ldp q30, q31, [sp, #528]
    ldp q28, q29, [sp, #496]
    ldp q26, q27, [sp, #464]
    ldp q24, q25, [sp, #432]
    ldp q22, q23, [sp, #400]
    ldp q20, q21, [sp, #368]
    ldp q18, q19, [sp, #336]
    ldp q16, q17, [sp, #304]
    ldp q6, q7, [sp, #272]
    ldp q4, q5, [sp, #240]
    ldp q2, q3, [sp, #208]
    ldp q0, q1, [sp, #176]
    ldr x30, [sp, #160]
    ldp x18, x29, [sp, #144]
    ldp x16, x17, [sp, #128]
    ldp x14, x15, [sp, #112]
    ldp x12, x13, [sp, #96]
    ldp x10, x11, [sp, #80]
    ldp x8, x9, [sp, #64]
    ldp x6, x7, [sp, #48]
    ldp x4, x5, [sp, #32]
    ldp x2, x3, [sp, #16]
    ldp x0, x1, [sp, #0]
    add sp, sp, #560
    eret

vector_common:
    ldr x1, =__stack_top          /* a fresh stack: the old one may be the problem */
    mov sp, x1
    bl aarch64_exception
    b park
