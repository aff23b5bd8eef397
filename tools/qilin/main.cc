// qilin: the command-line program (placeholder until the subcommands land).
#include <cstdio>
int main() { std::puts("qilin"); return 0; }
