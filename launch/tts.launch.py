"""Launch the Chatterbox TTS lifecycle node, then configure and activate it through lifecycle events.

    ros2 launch ros2_chatterbox tts.launch.py [params_file:=/path/params.yaml] [namespace:=robot1]
"""
import os

import launch
import launch.actions
import launch.events
import launch_ros.actions
import launch_ros.events.lifecycle
import lifecycle_msgs.msg
from ament_index_python.packages import get_package_share_directory
from launch.substitutions import LaunchConfiguration


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("ros2_chatterbox"), "config", "params.yaml")
    params_file = LaunchConfiguration("params_file")
    node = launch_ros.actions.LifecycleNode(
        package="ros2_chatterbox", executable="tts_node", name="tts_node",
        namespace=LaunchConfiguration("namespace"), parameters=[params_file], output="screen")
    matches_node = launch.events.matches_action(node)
    configure = launch.actions.EmitEvent(event=launch_ros.events.lifecycle.ChangeState(
        lifecycle_node_matcher=matches_node, transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
    # configure loads the model (seconds to minutes): activate once it reports "inactive"
    activate_when_configured = launch.actions.RegisterEventHandler(launch_ros.event_handlers.OnStateTransition(
        target_lifecycle_node=node, goal_state="inactive",
        entities=[launch.actions.EmitEvent(event=launch_ros.events.lifecycle.ChangeState(
            lifecycle_node_matcher=matches_node,
            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]))
    return launch.LaunchDescription([
        launch.actions.DeclareLaunchArgument("params_file", default_value=default_params,
                                             description="ROS parameter file for the node"),
        launch.actions.DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        activate_when_configured,
        node,
        configure,
    ])
