import PTQDCommands
PTQDMain.main()
