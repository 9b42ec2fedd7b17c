from neon_local.cli import main

main()
