from dualmcu.cli import main

main(prog_name="dualmcu")
