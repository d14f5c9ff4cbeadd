// emu.h's stand-in: quant.cuh includes this header but uses nothing of it in host code.
#pragma once
