#!/usr/bin/env python3
"""Drive a running tts_node from another process through rclpy: what the README's `ros2` commands do, for a
machine without the `ros2` command (a pip-only set-up). From the checkout:

    tools/say.py "Hello, I am your robot."              # the speak service (the default command)
    tools/say.py speak --interrupt "Stop everything and listen!"
    tools/say.py topic "Battery at twenty percent."     # publish on tts/text
    tools/say.py say "A long story. It has many sentences."    # the say action, with feedback; Ctrl-C cancels
    tools/say.py stop                                   # tts/stop
    tools/say.py voices list                            # or: add [--name alice] [--language fr] FILE, delete NAME
    tools/say.py speaking                               # tts/speaking as it changes, until Ctrl-C
    tools/say.py lifecycle get                          # or: set configure|activate|deactivate|cleanup|shutdown
    tools/say.py param get generation.temperature       # or: set NAME VALUE, describe NAME
    tools/say.py stop --ns /robot1                      # a node in a namespace (options after the command)

Where the interpreter running it has no rclpy (a pip-only machine's python3), it runs itself again with the
set-up's .venv/bin/python (or .venv-jazzy/). The ROS domain: ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE as
exported, otherwise 42 and LOCALHOST (what `make run` uses); the values used are printed on stderr first.
Exit status: 0 done, 1 the node answered with a failure, 2 a usage error, the node not found or no answer in time,
130 Ctrl-C.
"""
import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

DEFAULT_DOMAIN = "42"          # `make run` uses ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
DEFAULT_RANGE = "LOCALHOST"    # and the Makefile's ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
TRANSITIONS = ("configure", "activate", "deactivate", "cleanup", "shutdown")
COMMANDS = ("speak", "topic", "say", "stop", "voices", "languages", "speaking", "lifecycle", "param")


def with_rclpy() -> None:
    """Run again with the set-up's interpreter when this one has no rclpy (python3 on a pip-only machine): the venv
    whose ROS libraries the caller's environment already names (a test run on Jazzy), else .venv/, then .venv-jazzy/.
    The ROS wheels set LD_LIBRARY_PATH once per process tree and mark it done (_ROS_WHEELS_BOOTSTRAP_COMPLETE): going
    to the other venv, both are cleared so that its own libraries load."""
    if importlib.util.find_spec("rclpy") is not None:
        return
    root = Path(__file__).resolve().parent.parent
    libs = os.environ.get("LD_LIBRARY_PATH", "")
    named = [v for v in (".venv", ".venv-jazzy") if f"{root / v}/lib" in libs]
    for venv in named + [v for v in (".venv", ".venv-jazzy") if v not in named]:
        python = root / venv / "bin" / "python"
        if python.exists() and Path(sys.prefix).resolve() != (root / venv).resolve():
            env = dict(os.environ)
            if venv not in named:
                env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
                env["LD_LIBRARY_PATH"] = ":".join(p for p in libs.split(":") if p and not p.startswith(f"{root}/.venv"))
            os.execve(str(python), [str(python), str(Path(__file__).resolve())] + sys.argv[1:], env)
    sys.exit(f"[say] {sys.executable} has no rclpy: run `make setup` (pip-only, then this runs with .venv/) "
             "or source your ROS 2 installation")


class CliError(Exception):
    """A message for the user and the exit status: 1 the node refused, 2 it could not be reached."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def ros_environment() -> str:
    """Fill in `make run`'s domain and discovery range where they are not exported; the line saying so."""
    notes = []
    for name, default in (("ROS_DOMAIN_ID", DEFAULT_DOMAIN), ("ROS_AUTOMATIC_DISCOVERY_RANGE", DEFAULT_RANGE)):
        if not os.environ.get(name):
            os.environ[name] = default
            notes.append(name)
    line = (f"[say] ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} "
            f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']}")
    return line + (f" ({' and '.join(notes)} not exported: `make run`'s default)" if notes else "")


def parse_args(argv):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ns", default="", help="namespace of the node, e.g. /robot1")
    common.add_argument("--node", default="tts_node", help="node name for lifecycle and param (tts_node)")
    common.add_argument("--wait", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the node to be found (10)")
    common.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="seconds to wait for an answer once found (120)")
    ap = argparse.ArgumentParser(prog="say.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_):
        return sub.add_parser(name, parents=[common], help=help_, description=help_)

    for name, help_ in (("speak", "call the speak service; answers once the utterance was published"),
                        ("say", "send a goal to the say action, printing its feedback (Ctrl-C cancels it)")):
        p = command(name, help_)
        p.add_argument("text")
        p.add_argument("--voice", default="", help="a voice name (voices list); default: the node's default")
        p.add_argument("--interrupt", action="store_true", help="stop what is speaking now and clear the queue")
        p.add_argument("--language", default="", help="ISO 639-1 code (en, fr, ...); default: the node's")
    command("topic", "publish the text on tts/text (spoken in order, no answer)").add_argument("text")
    command("stop", "call tts/stop: stop the current utterance and clear the queue")
    p = command("speaking", "print tts/speaking (true while an utterance is published) as it changes")
    p.add_argument("--once", action="store_true", help="print the current value and end")
    p = command("voices", "the voice library: list, add a recording, delete")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("list", parents=[common], help="voice names, the default voice, whether the engine clones")
    v = verbs.add_parser("add", parents=[common], help="add a recording (5-60 s of speech) on the node's machine")
    v.add_argument("path")
    v.add_argument("--name", default="", help="voice name (default: from the file name)")
    v.add_argument("--overwrite", action="store_true", help="replace a voice of the same name")
    v.add_argument("--language", default="", help="ISO 639-1 code the voice speaks when a request names none")
    verbs.add_parser("delete", parents=[common], help="delete a voice").add_argument("name")
    command("languages", "the languages the loaded model speaks (the --language of speak and say)")
    p = command("lifecycle", "the node's lifecycle state: get, or set a transition")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("get", parents=[common], help="the current state")
    verbs.add_parser("set", parents=[common], help="run a transition").add_argument("transition",
                                                                                     choices=TRANSITIONS)
    p = command("param", "the node's parameters: get, set, describe")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("get", parents=[common], help="a parameter's value").add_argument("name")
    v = verbs.add_parser("set", parents=[common], help="set a parameter (YAML value: 0.6, true, text)")
    v.add_argument("name")
    v.add_argument("value")
    verbs.add_parser("describe", parents=[common], help="description, type, range, when it applies"
                     ).add_argument("name")
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["speak"] + list(argv)  # `say.py "text"`: the speak service
    return ap.parse_args(argv)


class Cli:
    """One rclpy node that finds the tts_node's services, calls them and spins until the answer."""

    def __init__(self, args):
        import rclpy
        from rclpy.signals import SignalHandlerOptions
        self.rclpy = rclpy
        self.args = args
        self.ns = args.ns.rstrip("/")
        if self.ns and not self.ns.startswith("/"):
            self.ns = "/" + self.ns
        self.node_name = f"{self.ns}/{args.node}"
        # Ctrl-C raises KeyboardInterrupt here instead of shutting rclpy down, so a say goal can still be cancelled
        rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"say_cli_{os.getpid()}")

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown()

    def not_found(self, what: str) -> CliError:
        return CliError(
            f"{what} not found within {self.args.wait:g} s in ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} "
            f"(ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']}). Is the node running "
            f"in this domain? Start it with `make run` (domain 42 unless ROS_DOMAIN_ID is exported), or export "
            f"the ROS_DOMAIN_ID it runs with; a node in a namespace needs --ns.", 2)

    def spin_until(self, done, seconds: float) -> None:
        """Spin in short waits (Ctrl-C is noticed within 0.1 s) until done() or the time is up."""
        end = time.monotonic() + seconds
        while not done() and time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.1)

    def wait_for(self, future, what: str):
        self.spin_until(future.done, self.args.timeout)
        if not future.done():
            raise CliError(f"no answer from {what} within {self.args.timeout:g} s (--timeout)", 2)
        return future.result()

    def call(self, srv_type, name: str, request):
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=self.args.wait):
            raise self.not_found(f"service {name}")
        return self.wait_for(client.call_async(request), name)

    # -- commands ----------------------------------------------------------------------------------------------
    def speak(self) -> str:
        from ros2_chatterbox.srv import Speak
        t0 = time.monotonic()
        res = self.call(Speak, f"{self.ns}/speak", Speak.Request(text=self.args.text, voice=self.args.voice,
                                                                  interrupt=self.args.interrupt,
                                                                  language=self.args.language))
        if not res.success:
            raise CliError(f"not spoken: {res.message}")
        return f"{res.message}; {res.sample_rate} Hz, answered after {time.monotonic() - t0:.2f} s"

    def topic(self) -> str:
        from rclpy.duration import Duration
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String
        name = f"{self.ns}/tts/text"
        pub = self.node.create_publisher(String, name, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.spin_until(lambda: pub.get_subscription_count() > 0, self.args.wait)  # else the message is lost
        if pub.get_subscription_count() == 0:
            raise self.not_found(f"a subscriber of {name}")
        pub.publish(String(data=self.args.text))
        try:  # reliable: wait until the node has the message, then stay a moment longer (keep-alive)
            pub.wait_for_all_acked(Duration(seconds=self.args.timeout))
        except Exception:  # noqa: BLE001 - an RMW without acknowledgements: the keep-alive alone
            pass
        self.spin_until(lambda: False, 0.5)
        return f"published on {name} (spoken in turn; its result is in the node's log)"

    def say(self) -> str:
        from action_msgs.msg import GoalStatus
        from rclpy.action import ActionClient

        from ros2_chatterbox.action import Say
        name = f"{self.ns}/say"
        client = ActionClient(self.node, Say, name)
        if not client.wait_for_server(timeout_sec=self.args.wait):
            raise self.not_found(f"action {name}")

        shown = []
        heard = [time.monotonic()]  # --timeout counts from the last sign of life: a long story may take minutes

        def feedback(msg) -> None:  # one line per sentence (feedback comes with every audio chunk), and the end
            f = msg.feedback
            heard[0] = time.monotonic()
            if not shown or shown[-1] != f.current_sentence:  # the last one names none: all done
                shown.append(f.current_sentence)
                print(f"feedback: {100 * f.progress:3.0f}% {f.audio_seconds:6.2f} s  {f.current_sentence}".rstrip(),
                      flush=True)

        goal = Say.Goal(text=self.args.text, voice=self.args.voice, interrupt=self.args.interrupt,
                        language=self.args.language)
        handle = self.wait_for(client.send_goal_async(goal, feedback_callback=feedback), name)
        if not handle.accepted:
            raise CliError(f"goal rejected by {name}")
        result_future = handle.get_result_async()
        try:
            while not result_future.done() and time.monotonic() - heard[0] < self.args.timeout:
                self.spin_until(result_future.done, 1.0)
            if not result_future.done():
                raise CliError(f"no answer from {name}: nothing heard for {self.args.timeout:g} s (--timeout)", 2)
            answer = result_future.result()
        except (KeyboardInterrupt, CliError) as exc:  # Ctrl-C or --timeout: the goal is not left speaking
            cancel = handle.cancel_goal_async()
            self.spin_until(cancel.done, 5.0)
            if isinstance(exc, CliError):
                raise
            raise CliError("Ctrl-C: goal cancelled", 130) from None
        result = answer.result
        if answer.status == GoalStatus.STATUS_SUCCEEDED:
            return f"result: {result.message}"
        state = {GoalStatus.STATUS_CANCELED: "CANCELED", GoalStatus.STATUS_ABORTED: "ABORTED"}.get(
            answer.status, str(answer.status))
        raise CliError(f"{result.message} (goal {state})")

    def stop(self) -> str:
        from std_srvs.srv import Trigger
        res = self.call(Trigger, f"{self.ns}/tts/stop", Trigger.Request())
        if not res.success:
            raise CliError(res.message)
        return res.message

    def speaking(self) -> str:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Bool
        name = f"{self.ns}/tts/speaking"
        values = []
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        sub = self.node.create_subscription(Bool, name, lambda m: values.append(m.data), latched)
        self.spin_until(lambda: sub.get_publisher_count() > 0, self.args.wait)
        if sub.get_publisher_count() == 0:
            raise self.not_found(f"a publisher of {name}")
        self.spin_until(lambda: values, self.args.wait)  # the latched value (TRANSIENT_LOCAL) comes first
        if not values:
            raise CliError(f"nothing on {name} within {self.args.wait:g} s", 2)
        shown = 0
        try:
            while True:
                for value in values[shown:]:
                    print(f"speaking: {str(value).lower()}", flush=True)
                shown = len(values)
                if self.args.once:
                    return ""
                self.rclpy.spin_once(self.node, timeout_sec=0.1)
        except KeyboardInterrupt:  # the way to end watching
            return ""

    def voices(self) -> str:
        from ros2_chatterbox.srv import AddVoice, DeleteVoice, ListVoices
        verb = self.args.verb
        if verb == "list":
            res = self.call(ListVoices, f"{self.ns}/voices/list", ListVoices.Request())
            if not res.success:
                raise CliError(res.message)
            languages = list(res.languages) + [""] * (len(res.names) - len(res.languages))
            lines = [n + (f"  [{lang}]" if lang else "") + ("  (default)" if n == res.default_voice else "")
                     for n, lang in zip(res.names, languages)]
            lines.append(f"default voice: {res.default_voice or '(the engine built-in voice)'}; engine "
                         f"{'clones voices' if res.can_clone else 'speaks every voice with its own voice'}")
            return "\n".join(lines)
        if verb == "add":  # the path is read by the node: absolute, so a relative one means the same to both
            req = AddVoice.Request(name=self.args.name, path=os.path.abspath(self.args.path),
                                   overwrite=self.args.overwrite, language=self.args.language)
            res = self.call(AddVoice, f"{self.ns}/voices/add", req)
            if not res.success:
                raise CliError(f"voice not added: {res.message}")
            return f"{res.message}; {res.duration:.1f} s recording"
        res = self.call(DeleteVoice, f"{self.ns}/voices/delete", DeleteVoice.Request(name=self.args.name))
        if not res.success:
            raise CliError(f"voice not deleted: {res.message}")
        return res.message

    def languages(self) -> str:
        from ros2_chatterbox.srv import ListLanguages
        res = self.call(ListLanguages, f"{self.ns}/languages/list", ListLanguages.Request())
        if not res.success:
            raise CliError(res.message)
        lines = [f"{code}  {name}" + ("  (default)" if code == res.default_language else "")
                 for code, name in zip(res.codes, res.names)]
        return "\n".join(lines + [f"model: {res.model}"])

    def lifecycle(self) -> str:
        from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
        node = self.node_name
        if self.args.verb == "get":
            return self.call(GetState, f"{node}/get_state", GetState.Request()).current_state.label
        wanted = self.args.transition
        available = self.call(GetAvailableTransitions, f"{node}/get_available_transitions",
                              GetAvailableTransitions.Request()).available_transitions
        match = [t.transition for t in available if t.transition.label == wanted]
        if not match:
            state = self.call(GetState, f"{node}/get_state", GetState.Request()).current_state.label
            labels = sorted({t.transition.label for t in available})
            raise CliError(f"{wanted} is not possible from state '{state}'; possible: {', '.join(labels) or 'none'}")
        req = ChangeState.Request()
        req.transition = match[0]
        ok = self.call(ChangeState, f"{node}/change_state", req).success
        state = self.call(GetState, f"{node}/get_state", GetState.Request()).current_state.label
        if not ok:
            raise CliError(f"{wanted} failed (the node's log says why); state: {state}")
        return f"{wanted}: done; state: {state}"

    def param(self) -> str:
        from rcl_interfaces.msg import ParameterType
        from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters
        from rclpy.parameter import Parameter, parameter_value_to_python
        node, name = self.node_name, self.args.name
        current = self.call(GetParameters, f"{node}/get_parameters", GetParameters.Request(names=[name])).values
        if not current or current[0].type == ParameterType.PARAMETER_NOT_SET:
            raise CliError(f"{node} has no parameter '{name}'")
        type_name = Parameter.Type(current[0].type).name.lower()
        if self.args.verb == "get":
            return f"{name} = {parameter_value_to_python(current[0])!r} ({type_name})"
        if self.args.verb == "describe":
            d = self.call(DescribeParameters, f"{node}/describe_parameters",
                          DescribeParameters.Request(names=[name])).descriptors[0]
            lines = [f"{name} ({type_name}{', read-only' if d.read_only else ''})", f"  {d.description}"]
            for r in list(d.floating_point_range) + list(d.integer_range):
                lines.append(f"  range: {r.from_value} to {r.to_value}" + (f", step {r.step}" if r.step else ""))
            if d.additional_constraints:
                lines.append(f"  {d.additional_constraints}")
            return "\n".join(lines)
        import yaml
        try:
            value = yaml.safe_load(self.args.value)  # as `ros2 param set` reads it: 0.6, 8, true, [1, 2], text
        except yaml.YAMLError:
            value = self.args.value
        if current[0].type == ParameterType.PARAMETER_STRING:
            value = self.args.value  # a string parameter takes the text as typed
        elif current[0].type == ParameterType.PARAMETER_DOUBLE and type(value) is int:
            value = float(value)  # `... 1` for a double parameter means 1.0
        elif value is None:
            raise CliError(f"give a value for {name}", 2)
        try:
            msg = Parameter(name, value=value).to_parameter_msg()
        except TypeError:
            msg = None
        if msg is None or msg.value.type != current[0].type:  # the node would answer "Wrong parameter type"
            raise CliError(f"{name} takes a {type_name} value, not {self.args.value!r}", 2)
        result = self.call(SetParameters, f"{node}/set_parameters",
                           SetParameters.Request(parameters=[msg])).results[0]
        if not result.successful:
            raise CliError(f"{name} not set: {result.reason}")
        return f"{name} = {value!r}"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with_rclpy()
    print(ros_environment(), file=sys.stderr, flush=True)
    cli = Cli(args)
    try:
        out = getattr(cli, args.command)()
    except CliError as exc:
        print(f"[say] {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    finally:
        cli.close()
    if out:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
