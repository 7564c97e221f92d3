package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ldmirror/ldmirror/resource"
)

// generateCommand writes what the package ships from the CLI's own
// definitions: the man page and the shell completions (scripts/package).
func generateCommand() *cli.Command {
	return &cli.Command{
		Name:   "generate",
		Usage:  "print the man page or a shell completion script, generated from the commands' definitions",
		Hidden: true,
		Subcommands: []*cli.Command{
			{
				Name:  "man",
				Usage: "the man page, ldmirror(8), in roff",
				Action: func(c *cli.Context) error {
					man, err := c.App.ToManWithSection(8)
					if err != nil {
						return err
					}
					_, err = fmt.Fprint(c.App.Writer, man)
					return err
				},
			},
			{
				Name:  "bash-completion",
				Usage: "bash completion: it asks ldmirror itself for the words at each TAB",
				Action: func(c *cli.Context) error {
					_, err := fmt.Fprint(c.App.Writer, bashCompletion)
					return err
				},
			},
			{
				Name:  "zsh-completion",
				Usage: "zsh completion: it asks ldmirror itself for the words at each TAB",
				Action: func(c *cli.Context) error {
					_, err := fmt.Fprint(c.App.Writer, zshCompletion)
					return err
				},
			},
		},
	}
}

// The completion scripts run the command line typed so far with
// --generate-bash-completion: urfave/cli answers with the subcommands and
// flags there, and completeResources adds the resource names.
const bashCompletion = `# bash completion for ldmirror (ldmirror generate bash-completion)
_ldmirror() {
	local cur words
	cur="${COMP_WORDS[COMP_CWORD]}"
	if [[ "$cur" == -* ]]; then
		words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
	else
		words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
	fi
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o bashdefault -o default -F _ldmirror ldmirror
`

const zshCompletion = `#compdef ldmirror
# zsh completion for ldmirror (ldmirror generate zsh-completion)
_ldmirror() {
	local -a words_
	local cur=${words[CURRENT]}
	if [[ "$cur" == -* ]]; then
		words_=("${(@f)$(${words[1,CURRENT-1]} $cur --generate-bash-completion 2>/dev/null)}")
	else
		words_=("${(@f)$(${words[1,CURRENT-1]} --generate-bash-completion 2>/dev/null)}")
	fi
	if [[ -n "${words_[1]}" ]]; then
		compadd -a words_
	else
		_files
	fi
}
_ldmirror "$@"
`

// resourceNames are the resources in c's --config-dir.
func resourceNames(c *cli.Context) ([]string, error) { return resource.Names(c.String("config-dir")) }
