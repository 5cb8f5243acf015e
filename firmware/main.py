# Starts the Sensorium firmware (lib/sensorium_fw). A crash is printed on the serial
# console and the board restarts after a pause, instead of sitting dead.
import sys
import time

import machine

try:
    from sensorium_fw import app

    app.main()
except KeyboardInterrupt:
    print("stopped (Ctrl-C): the REPL is yours")
except Exception as exc:
    sys.print_exception(exc)
    time.sleep(10)
    machine.reset()
