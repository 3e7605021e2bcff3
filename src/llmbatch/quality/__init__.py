"""Quality floor (issue #17): measure which cheap models agree with a reference well enough, with a stated
statistical guarantee, and route by the resulting policy. stats (pure bounds), sampling (stratified),
agreement (what "agrees" means per task kind), selection (threshold search with a guarantee), calibrate (the
orchestration), policy (file format and the routing restriction), report (expected versus actual cost)."""
