# Starts the Sensorium firmware: the loader (lib/sensorium_boot) runs the application
# bundle in app/ (or a flashed lib/sensorium_fw), finishing or rolling back an
# over-the-air update. A crash is printed on the serial console and the board restarts
# after a pause, instead of sitting dead.
import sys
import time

import machine

try:
    import sensorium_boot

    sensorium_boot.main()
except KeyboardInterrupt:
    print("stopped (Ctrl-C): the REPL is yours")
except Exception as exc:
    sys.print_exception(exc)
    time.sleep(10)
    machine.reset()
