"""Real label configs: captured from Label Studio 1.23 and taken from the guide users arrive with."""

# Captured (/setup of the BASIC_AUTH backend): every interactive input and a brush output.
CAPTURED_INTERACTIVE = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image" smart="true">
    <Label value="Cat"/><Label value="Dog"/>
  </RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Cat"/><Label value="Dog"/>
  </KeyPointLabels>
  <BrushLabels name="brush" toName="image">
    <Label value="Cat"/><Label value="Dog"/>
  </BrushLabels>
  <TextArea name="prompt" toName="image" editable="true" rows="2" maxSubmissions="1"/>
</View>"""

# SAM 2: clicks and boxes in, mask out.
SAM2 = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image">
    <Label value="positive" background="green"/>
    <Label value="negative" background="red"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image">
    <Label value="box"/>
  </RectangleLabels>
  <BrushLabels name="label" toName="image">
    <Label value="athlete" background="red"/>
  </BrushLabels>
</View>"""

# Grounding SAM: typed prompt in, masks out.
GROUNDING_SAM = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Style>
    .prompt { margin: 10px 0; }
  </Style>
  <View className="prompt">
    <Header value="Text Prompt:"/>
    <TextArea name="prompt" toName="image"
              editable="true" rows="2"
              showSubmitButton="true"
              placeholder="e.g., football player, athlete"/>
  </View>
  <BrushLabels name="label" toName="image" strokeWidth="2">
    <Label value="athlete" background="#FF0000"/>
    <Label value="referee" background="#0000FF"/>
  </BrushLabels>
</View>"""

# Grounding DINO: a typed prompt, or the labels and their synonyms, in; boxes out.
TEXT_PROMPT_BOXES = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="prompt" toName="image" editable="true" rows="2" maxSubmissions="1" showSubmitButton="true"/>
  <RectangleLabels name="label" toName="image">
    <Label value="cats" predicted_values="cat,kitten"/>
    <Label value="house"/>
    <Label value="traffic_light"/>
  </RectangleLabels>
</View>"""

# YOLO: threshold, custom weights and class mapping on the control.
YOLO_RECT = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels
      name="label"
      toName="image"
      model_path="yolov8m.pt"
      model_score_threshold="0.3"
  >
    <Label value="athlete" predicted_values="person,player"/>
    <Label value="Car" background="blue" predicted_values="car, truck"/>
    <Label value="Airplane" background="green"/>
    <Label value="Bus"/>
  </RectangleLabels>
</View>"""

# Several controls and objects: video tracking with a separate Labels tag, text spans, choices.
MIXED = """<View>
  <Video name="video" value="$video" framerate="25"/>
  <Labels name="videoLabels" toName="video" allowEmpty="true">
    <Label value="Man" predicted_values="person"/>
    <Label value="Car"/>
  </Labels>
  <VideoRectangle name="box" toName="video" model_tracker="bytetrack" model_conf="0.25"/>
  <Text name="text" value="$text"/>
  <Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
  <Image name="photo" value="$photo"/>
  <Choices name="kind" toName="photo" choice="multiple" model_skip="false">
    <View><Choice value="Indoor" predicted_values="room"/></View>
    <Choice value="Outdoor"/>
  </Choices>
  <KeyPointLabels name="pose" toName="photo" model_point_threshold="0.4" model_add_bboxes="true">
    <Label value="nose" model_index="0"/>
    <Label value="left_eye" model_index="1"/>
  </KeyPointLabels>
  <RectangleLabels name="obb" toName="photo" model_obb="true" model_skip="true">
    <Label value="Ship"/>
  </RectangleLabels>
</View>"""

ALL = {
    "captured_interactive": CAPTURED_INTERACTIVE,
    "sam2": SAM2,
    "grounding_sam": GROUNDING_SAM,
    "yolo_rect": YOLO_RECT,
    "mixed": MIXED,
}
