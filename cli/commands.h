/* commands: the entry point of each `gale` subcommand. Each cli/cmd_NAME.c parses its
 * arguments and calls one library entry point; it returns the process exit status.
 * cmd_tokenize is in the gale executable; the others are in libgale_commands.so (cli/main.c
 * opens it), which runs gale_commands_init(main's argv) before any of them. */
#ifndef GALE_CLI_COMMANDS_H
#define GALE_CLI_COMMANDS_H

int cmd_prepare(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_version(int argc, char **argv); /* gale --version */

void gale_commands_init(char **argv);

#endif
