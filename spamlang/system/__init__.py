"""How work meets this machine: atomic files and folders, the thread policy, and what the machine can hold (memory and
disk). Every stage uses these; they use nothing of SpamLang but its errors."""
