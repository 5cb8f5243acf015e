# Runs first on every boot. Kept minimal: main.py starts the firmware.
import gc

gc.collect()
