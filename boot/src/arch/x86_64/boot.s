/* PVH entry for QEMU q35 (x86/HVM direct boot ABI): 32-bit protected mode, paging off, flat
 * segments, interrupts off, EBX = physical address of hvm_start_info. We build an identity map
 * of the first 4 GiB with 2 MiB pages (2-4 GiB uncached: the MMIO hole, ECAM at 0xB000_0000,
 * the IOAPIC, HPET, VT-d and LAPIC all live there), enter long mode with SSE enabled, and call
 * `pvh_main(start_info)` on our own stack. */

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz: QEMU reads an ELF64 descriptor as a size_t */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi              /* keep start_info across the setup */

    /* Zero .bss (page tables, statics). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT, PDPT[0..3] -> PD0..PD3 (present, writable). */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $0x3, %eax
    mov $boot_pdpt, %edi
    mov $4, %ecx
1:  mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 1b

    /* 2048 PD entries of 2 MiB: present | writable | PS; PCD|PWT from 2 GiB up. */
    mov $boot_pd, %edi
    xor %ebx, %ebx              /* entry index */
2:  mov %ebx, %eax
    shl $21, %eax               /* physical address (low 32 bits) */
    or $0x83, %eax
    cmp $1024, %ebx
    jb 3f
    or $0x18, %eax
3:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $8, %edi
    inc %ebx
    cmp $2048, %ebx
    jb 2b

    /* CR4: PAE | OSFXSR | OSXMMEXCPT (SSE usable). */
    mov %cr4, %eax
    or $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    /* EFER.LME */
    mov $0xC0000080, %ecx
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    /* CR0: PG | MP, EM cleared (SSE and x87 usable). */
    mov %cr0, %eax
    and $~(1 << 2), %eax
    or $((1 << 31) | (1 << 1)), %eax
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode

    .code64
long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov $__stack_top, %rsp
    xor %ebp, %ebp
    fninit
    mov %esi, %edi              /* zero-extends: the upper half is undefined after the switch */
    call pvh_main
4:  hlt
    jmp 4b

    .section .rodata
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .bss
    .balign 4096
    .global boot_pml4
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4096 * 4

/* CPU exception stubs: push a dummy error code where the CPU pushes none, then the vector, and
 * enter Rust with a pointer to the frame. Rust reports the exception and exits with failure;
 * nothing returns. */
    .section .text
.macro stub vector, has_error
exception_stub_\vector:
    .if \has_error == 0
    push $0
    .endif
    push $\vector
    jmp exception_common
.endm

    stub 0, 0
    stub 1, 0
    stub 2, 0
    stub 3, 0
    stub 4, 0
    stub 5, 0
    stub 6, 0
    stub 7, 0
    stub 8, 1
    stub 9, 0
    stub 10, 1
    stub 11, 1
    stub 12, 1
    stub 13, 1
    stub 14, 1
    stub 15, 0
    stub 16, 0
    stub 17, 1
    stub 18, 0
    stub 19, 0
    stub 20, 0
    stub 21, 1
    stub 22, 0
    stub 23, 0
    stub 24, 0
    stub 25, 0
    stub 26, 0
    stub 27, 0
    stub 28, 0
    stub 29, 1
    stub 30, 1
    stub 31, 0

exception_common:
    mov %rsp, %rdi
    and $-16, %rsp
    call x86_exception
5:  hlt
    jmp 5b

    .section .rodata
    .balign 8
    .global exception_stub_table
exception_stub_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exception_stub_\v
    .endr

/* Interrupt stubs for vectors 0x40-0x4f: save the caller-saved registers (the Rust handler
 * follows the C ABI, and the target is soft-float, so no SSE state needs saving), pass the
 * vector, return with iretq. Stack: the CPU aligns RSP to 16 and pushes 5 qwords; 9 more make
 * the call site 16-aligned as the ABI requires. */
    .section .text
.macro irq_stub vector
irq_stub_\vector:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov $\vector, %edi
    call x86_irq
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq
.endm

    .irp v, 64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79
    irq_stub \v
    .endr

    .section .rodata
    .balign 8
    .global irq_stub_table
irq_stub_table:
    .irp v, 64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79
    .quad irq_stub_\v
    .endr
