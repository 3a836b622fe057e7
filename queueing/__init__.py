"""Pure queueing and overload policy shared by the live router and the simulator."""
