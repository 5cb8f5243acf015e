"""Runs the firmware's test cases on whatever MicroPython (or CPython) this is:
`run(["cases_proto", …])` prints one line per case and a summary line."""

import sys

MODULES = (
    "cases_proto",
    "cases_control",
    "cases_buffer",
    "cases_drivers",
    "cases_timing",
    "cases_ota",
    "cases_mqtt5",
)


def run(modules=MODULES):
    passed = failed = 0
    for name in modules:
        module = __import__(name)
        for case in sorted(n for n in dir(module) if n.startswith("case_")):
            try:
                getattr(module, case)()
            except Exception as exc:  # every failure is reported, then the next case runs
                failed += 1
                print("FAIL %s.%s: %s: %s" % (name, case, type(exc).__name__, exc))
                if hasattr(sys, "print_exception"):
                    sys.print_exception(exc)
            else:
                passed += 1
                print("PASS %s.%s" % (name, case))
    print("DONE passed=%d failed=%d" % (passed, failed))
    return failed == 0


if __name__ == "__main__":
    run()
