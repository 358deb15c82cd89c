from vqclip.cli import main

main()
