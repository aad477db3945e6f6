"""Launch the Chatterbox TTS lifecycle node, configure it, then activate it once configure has succeeded.

    ros2 launch ros2_chatterbox tts.launch.py [params_file:=/path/params.yaml] [namespace:=robot1]
                                              [autostart:=true|false] [log_level:=info]

Activation follows only the first configuring -> inactive transition: a later deactivate (or cleanup + configure)
leaves the node inactive, and a failed activate (the node logs its reason) is reported once, never retried. A failed
configure leaves the node unconfigured, reported once; fix the parameters and `ros2 lifecycle set <node> configure`.
With `autostart:=false` nothing is triggered: drive the node with `ros2 lifecycle set` or a lifecycle manager.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition


def _report(node, start_state, goal_state, text):
    """A log line from launch when the node's transition start_state -> goal_state happens."""
    return RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state=start_state, goal_state=goal_state,
        entities=[LogInfo(msg=text)]))


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("ros2_chatterbox"), "config", "params.yaml")
    node = LifecycleNode(
        package="ros2_chatterbox", executable="tts_node", name="tts_node",
        namespace=LaunchConfiguration("namespace"),
        # this launch file drives the lifecycle: the node must not also start itself from a parameter file
        parameters=[LaunchConfiguration("params_file"), {"autostart": False}],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        output="screen")
    autostart = IfCondition(LaunchConfiguration("autostart"))

    def change_state(transition_id, condition=None):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id),
                         condition=condition)

    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS parameter file for the node (default: the package's params.yaml)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and then activate the node at start"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="log level: debug, info, warn, error or fatal"),
        # configure loads the model (seconds to minutes); activate once, when that configure has succeeded.
        # handle_once: after start-up the lifecycle is the user's (cleanup + configure leaves the node inactive).
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[change_state(Transition.TRANSITION_ACTIVATE)], handle_once=True), condition=autostart),
        _report(node, "configuring", "unconfigured",
                "tts_node: configure failed (the node logged why); it stays unconfigured: fix the parameters, "
                "then `ros2 lifecycle set <node> configure`"),
        _report(node, "activating", "inactive",
                "tts_node: activate failed (the node logged why); it stays inactive: fix the cause, then "
                "`ros2 lifecycle set <node> activate`"),
        _report(node, "errorprocessing", "unconfigured",
                "tts_node: a transition raised an error (the node logged why); it is unconfigured again"),
        node,
        change_state(Transition.TRANSITION_CONFIGURE, condition=autostart),
    ])
