// Hooks for the CPU emulator (emu/): compiled as C++ with emu/src/cuda_emu.h force-included,
// each kernel registers itself under its name. On the device these expand to nothing.
#pragma once

#ifdef MASKED_SOFTMAX_EMULATION
#define REGISTER_KERNEL(name) EMU_REGISTER_KERNEL(name)
#define CHECK_ALIGNED(ptr, bytes) emu_check_aligned((ptr), (bytes))
#else
#define REGISTER_KERNEL(name)
#define CHECK_ALIGNED(ptr, bytes) ((void)0)
#endif
