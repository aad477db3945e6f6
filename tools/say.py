#!/usr/bin/env python3
"""Talk to a running tts_node from another process (for machines without the `ros2` command).

    .venv/bin/python tools/say.py "Hello there."             # /speak, waits for the answer
    .venv/bin/python tools/say.py --voice alice "Hi."        # a voice from voices/
    .venv/bin/python tools/say.py --topic "Queued text."     # publish on /tts/text
    .venv/bin/python tools/say.py --stop                     # /tts/stop
    .venv/bin/python tools/say.py --ns /robot1 "Hi."         # a node in a namespace
"""
import argparse
import os
import sys
import time

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "42")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text", nargs="?", default="")
    ap.add_argument("--voice", default="")
    ap.add_argument("--interrupt", action="store_true")
    ap.add_argument("--topic", action="store_true", help="publish on tts/text instead of calling speak")
    ap.add_argument("--stop", action="store_true", help="call tts/stop")
    ap.add_argument("--ns", default="", help="namespace of the node, e.g. /robot1")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    import rclpy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from ros2_chatterbox.srv import Speak

    rclpy.init()
    node = rclpy.create_node("say_cli")
    try:
        if args.topic:
            pub = node.create_publisher(String, f"{args.ns}/tts/text", 10)
            end = time.monotonic() + 10
            while pub.get_subscription_count() == 0 and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.1)
            pub.publish(String(data=args.text))
            rclpy.spin_once(node, timeout_sec=0.5)
            print("published")
            return 0
        srv_type, name, req = ((Trigger, f"{args.ns}/tts/stop", Trigger.Request()) if args.stop else
                               (Speak, f"{args.ns}/speak",
                                Speak.Request(text=args.text, voice=args.voice, interrupt=args.interrupt)))
        client = node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=10.0):
            print(f"{name} is not available (is the node running, same ROS_DOMAIN_ID "
                  f"{os.environ['ROS_DOMAIN_ID']}?)", file=sys.stderr)
            return 2
        t0 = time.monotonic()
        future = client.call_async(req)
        rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
        res = future.result()
        if res is None:
            print("no answer", file=sys.stderr)
            return 2
        extra = f", {res.duration:.2f} s of audio at {res.sample_rate} Hz" if hasattr(res, "duration") else ""
        print(f"success={res.success} ({time.monotonic() - t0:.2f} s): {res.message}{extra}")
        return 0 if res.success else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
