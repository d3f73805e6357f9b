native: $(BUILD)/libllmc_cpu.so
