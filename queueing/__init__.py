"""Pure queueing and overload policy shared by the live server and the simulator."""
