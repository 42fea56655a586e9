/*
 * The trivial binary the exec storm runs: no libc, no dynamic loader, no
 * file opens; it exits 0 at once. Its name is the marker the harness counts
 * in the tools' output (the comm after exec is the file's name).
 *
 * Built by bench/run.py: cc -static -nostdlib -O2 -o bnch_target target.c
 */
void _start(void)
{
#if defined(__x86_64__)
	__asm__ volatile("mov $60, %%eax\n\t" /* exit(0) */
			 "xor %%edi, %%edi\n\t"
			 "syscall"
			 :
			 :
			 : "rax", "rdi", "memory");
#elif defined(__aarch64__)
	__asm__ volatile("mov x8, #93\n\t" /* exit(0) */
			 "mov x0, #0\n\t"
			 "svc #0"
			 :
			 :
			 : "x0", "x8", "memory");
#else
#error "bnch_target: add the exit system call for this architecture"
#endif
	__builtin_unreachable();
}
