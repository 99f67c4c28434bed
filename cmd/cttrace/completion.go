package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// The bash and zsh scripts ask cttrace itself for the words that fit
// (urfave/cli's --generate-bash-completion, which lists commands, or a
// command's flags after a dash, and runs nothing), so they follow the
// definitions without being regenerated. fish gets a static script that
// urfave/cli writes from the same definitions.
const bashCompletion = `# bash completion for cttrace: source <(cttrace completion bash)
_cttrace() {
	local cur=${COMP_WORDS[COMP_CWORD]} words
	if [[ $cur == -* ]]; then
		words=$("${COMP_WORDS[@]:0:COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
	else
		words=$("${COMP_WORDS[@]:0:COMP_CWORD}" --generate-bash-completion 2>/dev/null)
	fi
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o bashdefault -o default -F _cttrace cttrace
`

const zshCompletion = `#compdef cttrace
# zsh completion for cttrace: source <(cttrace completion zsh)
_cttrace() {
	local -a words_
	local cur=${words[CURRENT]}
	if [[ $cur == -* ]]; then
		words_=("${(@f)$(${words[1,CURRENT-1]} $cur --generate-bash-completion 2>/dev/null)}")
	else
		words_=("${(@f)$(${words[1,CURRENT-1]} --generate-bash-completion 2>/dev/null)}")
	fi
	if [[ -n ${words_[1]} ]]; then
		compadd -a words_
	else
		_files
	fi
}
compdef _cttrace cttrace
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: bash, zsh or fish",
		ArgsUsage: "SHELL",
		Description: "Examples:\n" +
			"   source <(cttrace completion bash)                               this shell\n" +
			"   cttrace completion bash > /etc/bash_completion.d/cttrace        every bash\n" +
			"   cttrace completion zsh > \"${fpath[1]}/_cttrace\"\n" +
			"   cttrace completion fish > ~/.config/fish/completions/cttrace.fish",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError(fmt.Errorf("want one shell: bash, zsh or fish"))
			}
			var script string
			switch shell := c.Args().First(); shell {
			case "bash":
				script = bashCompletion
			case "zsh":
				script = zshCompletion
			case "fish":
				s, err := c.App.ToFishCompletion()
				if err != nil {
					return fmt.Errorf("write fish completion: %w", err)
				}
				script = s
			default:
				return usageError(fmt.Errorf("unknown shell %q (want bash, zsh or fish)", shell))
			}
			_, err := fmt.Fprint(c.App.Writer, script)
			return err
		},
	}
}

// manCommand writes cttrace.1 from the same definitions as --help (`make
// man`); hidden, as it is for packagers.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the manual page (roff), for packagers: cttrace man > cttrace.1",
		Hidden: true,
		Action: func(c *cli.Context) error {
			page, err := c.App.ToMan()
			if err != nil {
				return fmt.Errorf("write manual page: %w", err)
			}
			_, err = fmt.Fprint(c.App.Writer, page)
			return err
		},
	}
}
